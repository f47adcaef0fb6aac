// The agent's channel where the VMM gives the guest a vsock instead of a virtio-serial port (Cloud
// Hypervisor): the agent listens on a vsock port, and the VMM's proxy connects to it once per
// worker connection (`CONNECT <port>` on the host's side). The standard library has no AF_VSOCK,
// so the socket calls are made by number.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unsafe"
)

const (
	afVsock      = 40         // AF_VSOCK
	vmaddrCidAny = 0xFFFFFFFF // VMADDR_CID_ANY
)

// sockaddrVM is struct sockaddr_vm of <linux/vm_sockets.h>.
type sockaddrVM struct {
	family    uint16
	reserved1 uint16
	port      uint32
	cid       uint32
	flags     uint8
	zero      [3]uint8
}

// listenVsock listens on port for connections from the host; fails where the guest has no vsock.
func listenVsock(port uint32) (int, error) {
	fd, err := syscall.Socket(afVsock, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("vsock socket: %w", err)
	}
	address := sockaddrVM{family: afVsock, port: port, cid: vmaddrCidAny}
	if _, _, errno := syscall.Syscall(syscall.SYS_BIND, uintptr(fd), uintptr(unsafe.Pointer(&address)), unsafe.Sizeof(address)); errno != 0 {
		syscall.Close(fd)
		return -1, fmt.Errorf("vsock bind to port %d: %w", port, errno)
	}
	if err := syscall.Listen(fd, 8); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("vsock listen: %w", err)
	}
	return fd, nil
}

// acceptVsock waits for the next connection. syscall.Accept cannot be used: it closes a
// connection whose address family it does not know.
func acceptVsock(listener int) (*os.File, error) {
	fd, _, errno := syscall.Syscall6(syscall.SYS_ACCEPT4, uintptr(listener), 0, 0, syscall.SOCK_CLOEXEC, 0, 0)
	if errno != 0 {
		return nil, errno
	}
	return os.NewFile(fd, "vsock"), nil
}

// serveVsock serves each connection the host makes, at once: a restarted worker connects anew
// while the old connection may not have been seen to close yet.
func serveVsock(listener int) {
	for {
		conn, err := acceptVsock(listener)
		if err != nil {
			if err == syscall.EINTR || err == syscall.ECONNABORTED {
				continue
			}
			fmt.Fprintf(os.Stderr, "pcr-agent: vsock accept: %v\n", err)
			return
		}
		fmt.Fprintf(os.Stderr, "pcr-agent %s: channel open (vsock)\n", version)
		go func() {
			err := serve(conn)
			conn.Close()
			fmt.Fprintf(os.Stderr, "pcr-agent: vsock channel ended: %v\n", err)
		}()
	}
}

// hasVsockDevice: the VMM gave this guest a virtio vsock device (virtio device id 19). Without
// one the agent keeps looking for its virtio-serial port, even where the kernel has AF_VSOCK.
func hasVsockDevice() bool {
	ids, _ := filepath.Glob("/sys/bus/virtio/devices/*/device")
	for _, path := range ids {
		if id, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(id)) == "0x0013" {
			return true
		}
	}
	return false
}
