// pcr-agent: the guest side of the worker's door into a VM (docs/agent-protocol.md). It opens the
// virtio-serial port named pcr.agent (or, for tests, connects to a unix socket), says hello, and
// runs what the host asks, many requests at once. When the channel drops it opens it again.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const version = "0.1.0"

// MaxConcurrent bounds the commands running at once; more are refused, not queued.
const MaxConcurrent = 128

func main() {
	port := flag.String("port", "pcr.agent", "virtio-serial port name to open")
	connect := flag.String("connect", "", "unix socket to connect to instead of a port (tests)")
	flag.Parse()
	for {
		channel, err := open(*port, *connect)
		if err != nil {
			fmt.Fprintf(os.Stderr, "pcr-agent: %v\n", err)
			time.Sleep(500 * time.Millisecond)
			continue
		}
		err = serve(channel)
		channel.Close()
		if *connect != "" && err == io.EOF {
			return // a test's host went away
		}
		fmt.Fprintf(os.Stderr, "pcr-agent: channel ended: %v\n", err)
		time.Sleep(200 * time.Millisecond)
	}
}

func open(port, connect string) (io.ReadWriteCloser, error) {
	if connect != "" {
		return net.Dial("unix", connect)
	}
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, nameFile := range names {
		name, err := os.ReadFile(nameFile)
		if err == nil && strings.TrimSpace(string(name)) == port {
			return os.OpenFile("/dev/"+filepath.Base(filepath.Dir(nameFile)), os.O_RDWR, 0)
		}
	}
	return nil, fmt.Errorf("no virtio-serial port named %s", port)
}

type session struct {
	writeMu sync.Mutex
	out     io.Writer
	mu      sync.Mutex
	running map[uint32]chan struct{}
}

func serve(channel io.ReadWriter) error {
	s := &session{out: channel, running: map[uint32]chan struct{}{}}
	s.hello()
	for {
		frame, err := readFrame(channel)
		if err != nil {
			return err
		}
		switch frame.Type {
		case TypeHelloRequest:
			s.hello()
		case TypeExec:
			s.exec(frame)
		case TypeCancel:
			s.mu.Lock()
			if cancel, ok := s.running[frame.Stream]; ok {
				close(cancel)
				delete(s.running, frame.Stream)
			}
			s.mu.Unlock()
		default:
			s.fail(frame.Stream, fmt.Sprintf("unknown frame type %d", frame.Type))
		}
	}
}

func (s *session) send(frameType byte, stream uint32, body interface{}) {
	payload, err := json.Marshal(body)
	if err == nil {
		var encoded []byte
		if encoded, err = encodeFrame(Frame{Type: frameType, Stream: stream, Payload: payload}); err == nil {
			s.writeMu.Lock()
			_, err = s.out.Write(encoded)
			s.writeMu.Unlock()
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pcr-agent: sending a frame of type %d failed: %v\n", frameType, err)
	}
}

func (s *session) fail(stream uint32, message string) {
	s.send(TypeError, stream, map[string]string{"message": message})
}

func (s *session) hello() {
	s.send(TypeHello, 0, map[string]interface{}{"protocol": 1, "version": version, "uptimeMs": uptimeMs(), "pid": os.Getpid()})
}

func (s *session) exec(frame Frame) {
	var req ExecRequest
	if err := json.Unmarshal(frame.Payload, &req); err != nil {
		s.fail(frame.Stream, "bad exec request: "+err.Error())
		return
	}
	cancel := make(chan struct{})
	s.mu.Lock()
	if _, taken := s.running[frame.Stream]; taken || len(s.running) >= MaxConcurrent {
		s.mu.Unlock()
		s.fail(frame.Stream, "stream in use or too many commands running")
		return
	}
	s.running[frame.Stream] = cancel
	s.mu.Unlock()
	go func() {
		result, err := runExec(req, cancel)
		s.mu.Lock()
		if s.running[frame.Stream] == cancel {
			delete(s.running, frame.Stream)
		}
		s.mu.Unlock()
		if err != nil {
			s.fail(frame.Stream, err.Error())
			return
		}
		s.send(TypeExit, frame.Stream, result)
	}()
}

func uptimeMs() int64 {
	text, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	var seconds float64
	fmt.Sscanf(string(text), "%f", &seconds)
	return int64(seconds * 1000)
}
