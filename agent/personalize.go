// Personalisation of a pooled VM at claim time (docs/agent-protocol.md, "personalize"): a guest
// booted or restored from a pool becomes one tenant's VM. Two clones of one snapshot share their
// memory, so their kernel's random state and machine id too: both are replaced here, with a seed
// the host drew for this VM alone, before anything of the tenant's runs.
package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"syscall"
	"time"
	"unsafe"
)

// Frame types of personalisation.
const (
	TypePersonalize        byte = 27 // host -> agent, JSON personalizeRequest
	TypePersonalized       byte = 28 // agent -> host, JSON {interface}
	minSeedBytes                = 32
	maxSeedBytes                = 512
	rndAddEntropy               = 0x40085203 // _IOW('R', 0x03, int[2])
	rndReseedCrng               = 0x5207     // _IO('R', 0x07)
	machineIDFile               = "/etc/machine-id"
	hostsFile                   = "/etc/hosts"
	resolvFile                  = "/etc/resolv.conf"
	personalizeCommandWait      = 10 * time.Second
)

var (
	// A host name as the worker takes it (RFC 1123, lower case): dot-separated labels, 253 at most.
	hostnamePattern  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
	machineIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

type personalizeRequest struct {
	Hostname  string `json:"hostname"`
	Seed      []byte `json:"seed"` // base64 in JSON
	MachineID string `json:"machineId"`
	NowMs     int64  `json:"nowMs"`
	// Network, all or none: "10.0.0.5/24", the gateway, the DNS server and the MAC.
	Address string `json:"address"`
	Gateway string `json:"gateway"`
	DNS     string `json:"dns"`
	MAC     string `json:"mac"`
	// Without an address: only bring the interface up. A pool does it before pausing a guest, so
	// that the claim does not wait for the NIC to fill its rings (it has no address until then).
	LinkUp bool `json:"linkUp"`
}

type personalizeAnswer struct {
	Interface string `json:"interface"`
}

// personalize checks the whole request first, then applies it: clock, randomness, identity, network.
func personalize(payload []byte, _ <-chan struct{}) (answer, error) {
	var req personalizeRequest
	if err := decodeRequest(payload, &req); err != nil {
		return answer{}, err
	}
	if err := checkPersonalize(req); err != nil {
		return answer{}, err
	}
	if req.NowMs > 0 {
		// A clone resumes with the clock of the moment its snapshot was taken.
		tv := syscall.NsecToTimeval(req.NowMs * int64(time.Millisecond))
		if err := syscall.Settimeofday(&tv); err != nil {
			return answer{}, precondition("cannot set the clock: %v", err)
		}
	}
	if err := reseed(req.Seed); err != nil {
		return answer{}, precondition("cannot reseed the kernel's random generator: %v", err)
	}
	if err := os.WriteFile(machineIDFile, []byte(req.MachineID+"\n"), 0o444); err != nil {
		return answer{}, precondition("cannot write %s: %v", machineIDFile, err)
	}
	if err := syscall.Sethostname([]byte(req.Hostname)); err != nil {
		return answer{}, precondition("cannot set the host name: %v", err)
	}
	if err := os.WriteFile(hostsFile, []byte("127.0.0.1 localhost "+req.Hostname+"\n"), 0o644); err != nil {
		return answer{}, precondition("cannot write %s: %v", hostsFile, err)
	}
	// On the console (the agent's stderr): where a claimed VM's own story starts.
	fmt.Fprintf(os.Stderr, "pcr-agent: personalized as %s\n", req.Hostname)
	result := personalizeAnswer{}
	if req.LinkUp {
		name, err := linkUp()
		if err != nil {
			return answer{}, err
		}
		result.Interface = name
	}
	if req.Address != "" {
		name, err := configureNetwork(req)
		if err != nil {
			return answer{}, err
		}
		result.Interface = name
	}
	return jsonAnswer(TypePersonalized, result)
}

func checkPersonalize(req personalizeRequest) error {
	if len(req.Hostname) > 253 || !hostnamePattern.MatchString(req.Hostname) {
		return invalid("hostname must be a lower-case RFC 1123 host name")
	}
	if len(req.Seed) < minSeedBytes || len(req.Seed) > maxSeedBytes {
		return invalid("seed must hold %d..%d bytes", minSeedBytes, maxSeedBytes)
	}
	if !machineIDPattern.MatchString(req.MachineID) {
		return invalid("machineId must be 32 lower-case hex digits")
	}
	if req.NowMs < 0 {
		return invalid("nowMs must not be negative")
	}
	if req.LinkUp && req.Address != "" {
		return invalid("linkUp is for a guest without an address")
	}
	if req.Address == "" {
		if req.Gateway != "" || req.DNS != "" || req.MAC != "" {
			return invalid("gateway, dns and mac need an address")
		}
		return nil
	}
	ip, _, err := net.ParseCIDR(req.Address)
	if err != nil || ip.To4() == nil {
		return invalid("address must be an IPv4 CIDR")
	}
	for _, host := range []string{req.Gateway, req.DNS} {
		if parsed := net.ParseIP(host); parsed == nil || parsed.To4() == nil {
			return invalid("gateway and dns must be IPv4 addresses")
		}
	}
	if mac, err := net.ParseMAC(req.MAC); err != nil || len(mac) != 6 {
		return invalid("mac must be a 6-byte MAC address")
	}
	return nil
}

// reseed credits the seed to the input pool and has the kernel reseed its generator from it now:
// a plain write to /dev/urandom would only be mixed in at the next scheduled reseed.
func reseed(seed []byte) error {
	file, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer file.Close()
	words := (len(seed) + 3) / 4
	buf := make([]byte, 8+words*4)
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(len(seed) * 8)
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(seed))
	copy(buf[8:], seed)
	if err := ioctl(file.Fd(), rndAddEntropy, unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("RNDADDENTROPY: %v", err)
	}
	if err := ioctl(file.Fd(), rndReseedCrng, nil); err != nil {
		return fmt.Errorf("RNDRESEEDCRNG: %v", err)
	}
	return nil
}

// configureNetwork gives the guest's one network interface the VM's MAC and address, by ioctl: a
// pooled guest keeps it down until now (it has no address of its own before the claim), and a
// process per step would cost most of a claim under emulation.
func configureNetwork(req personalizeRequest) (string, error) {
	name, err := networkInterface()
	if err != nil {
		return "", err
	}
	ip, network, _ := net.ParseCIDR(req.Address)
	mac, _ := net.ParseMAC(req.MAC)
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", precondition("socket: %v", err)
	}
	defer syscall.Close(fd)
	steps := []struct {
		what string
		run  func() error
	}{
		{"set its MAC", func() error {
			var hw [14]byte
			copy(hw[:], mac)
			err := ifreqIoctl(fd, name, syscall.SIOCSIFHWADDR, sockaddrRaw(syscall.ARPHRD_ETHER, hw))
			if err == syscall.EBUSY {
				// A NIC that cannot change its MAC while up (virtio-net can, with its control queue).
				if err = setFlags(fd, name, 0, syscall.IFF_UP); err == nil {
					err = ifreqIoctl(fd, name, syscall.SIOCSIFHWADDR, sockaddrRaw(syscall.ARPHRD_ETHER, hw))
				}
			}
			return err
		}},
		{"set its address", func() error { return ifreqIoctl(fd, name, syscall.SIOCSIFADDR, sockaddrInet(ip)) }},
		{"set its netmask", func() error { return ifreqIoctl(fd, name, syscall.SIOCSIFNETMASK, sockaddrInet(net.IP(network.Mask))) }},
		{"set it up", func() error { return setFlags(fd, name, syscall.IFF_UP|syscall.IFF_RUNNING, 0) }},
		{"add the default route", func() error { return addDefaultRoute(fd, name, net.ParseIP(req.Gateway)) }},
	}
	for _, step := range steps {
		if err := step.run(); err != nil {
			return "", precondition("%s: cannot %s: %v", name, step.what, err)
		}
	}
	if err := os.WriteFile(resolvFile, []byte("nameserver "+req.DNS+"\n"), 0o644); err != nil {
		return "", precondition("cannot write %s: %v", resolvFile, err)
	}
	return name, nil
}

// linkUp brings the guest's network interface up, with no address.
func linkUp() (string, error) {
	name, err := networkInterface()
	if err != nil {
		return "", err
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", precondition("socket: %v", err)
	}
	defer syscall.Close(fd)
	if err := setFlags(fd, name, syscall.IFF_UP, 0); err != nil {
		return "", precondition("%s: cannot set it up: %v", name, err)
	}
	return name, nil
}

// ifreq is struct ifreq: the interface name, then a 24-byte union (a sockaddr, or the flags).
type ifreq struct {
	name [syscall.IFNAMSIZ]byte
	data [24]byte
}

func sockaddrRaw(family uint16, data [14]byte) [16]byte {
	var raw [16]byte
	*(*uint16)(unsafe.Pointer(&raw[0])) = family
	copy(raw[2:], data[:])
	return raw
}

func sockaddrInet(ip net.IP) [16]byte {
	var data [14]byte
	copy(data[2:6], ip.To4()) // after the port
	return sockaddrRaw(syscall.AF_INET, data)
}

func ifreqIoctl(fd int, name string, request uintptr, addr [16]byte) error {
	var req ifreq
	copy(req.name[:], name)
	copy(req.data[:], addr[:])
	return ioctl(uintptr(fd), request, unsafe.Pointer(&req))
}

func setFlags(fd int, name string, set, clear uint16) error {
	var req ifreq
	copy(req.name[:], name)
	if err := ioctl(uintptr(fd), syscall.SIOCGIFFLAGS, unsafe.Pointer(&req)); err != nil {
		return err
	}
	flags := (*uint16)(unsafe.Pointer(&req.data[0]))
	*flags = (*flags | set) &^ clear
	return ioctl(uintptr(fd), syscall.SIOCSIFFLAGS, unsafe.Pointer(&req))
}

// rtentry is struct rtentry of <linux/route.h> (Go lays it out as C does on 64-bit Linux).
type rtentry struct {
	pad1    uint64
	dst     [16]byte
	gateway [16]byte
	genmask [16]byte
	flags   uint16
	pad2    int16
	pad3    uint64
	pad4    uintptr
	metric  int16
	dev     *byte
	mtu     uint64
	window  uint64
	irtt    uint16
}

func addDefaultRoute(fd int, name string, gateway net.IP) error {
	const rtfUp, rtfGateway = 0x1, 0x2
	dev := append([]byte(name), 0)
	route := rtentry{
		dst:     sockaddrInet(net.IPv4zero),
		gateway: sockaddrInet(gateway),
		genmask: sockaddrInet(net.IPv4zero),
		flags:   rtfUp | rtfGateway,
		dev:     &dev[0],
	}
	err := ioctl(uintptr(fd), syscall.SIOCADDRT, unsafe.Pointer(&route))
	if err == syscall.EEXIST {
		// A default route from before (a guest that configured itself): replaced by ours.
		if err = ioctl(uintptr(fd), syscall.SIOCDELRT, unsafe.Pointer(&route)); err == nil || err == syscall.ESRCH {
			err = ioctl(uintptr(fd), syscall.SIOCADDRT, unsafe.Pointer(&route))
		}
	}
	return err
}

// networkInterface is eth0, or else the first interface that is not the loopback.
func networkInterface() (string, error) {
	if _, err := os.Stat("/sys/class/net/eth0"); err == nil {
		return "eth0", nil
	}
	paths, _ := filepath.Glob("/sys/class/net/*")
	sort.Strings(paths)
	for _, path := range paths {
		if name := filepath.Base(path); name != "lo" {
			return name, nil
		}
	}
	return "", precondition("the guest has no network interface")
}
