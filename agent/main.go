// pcr-agent: the guest side of the worker's door into a VM (docs/agent-protocol.md). It opens the
// virtio-serial port named pcr.agent (or, for tests, connects to a unix socket), says hello, and
// runs what the host asks, many requests at once. When the channel drops it opens it again.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

const version = "0.1.0"

// MaxConcurrent bounds the requests in flight at once (commands, file calls, long polls, stdin
// writes); more are refused RESOURCE_EXHAUSTED, not queued.
const MaxConcurrent = 128

func main() {
	port := flag.String("port", "pcr.agent", "virtio-serial port name to open")
	vsockPort := flag.Uint("vsock-port", 1024, "vsock port to listen on where there is no virtio-serial port")
	connect := flag.String("connect", "", "unix socket to connect to instead of a port (tests)")
	flag.Parse()
	for {
		channel, err := open(*port, *connect)
		if err != nil && *connect == "" && hasVsockDevice() {
			// No port by that name: a VMM that gives the guest a vsock instead (Cloud Hypervisor).
			if listener, vsockErr := listenVsock(uint32(*vsockPort)); vsockErr == nil {
				serveVsock(listener)
				syscall.Close(listener)
				continue
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "pcr-agent: %v\n", err)
			time.Sleep(500 * time.Millisecond)
			continue
		}
		// On the console: when the agent could first serve (bench/agent times the boot to this line).
		fmt.Fprintf(os.Stderr, "pcr-agent %s: channel open\n", version)
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
	// Requests in flight (commands, file calls, long polls), by stream: closing one cancels it.
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
		func() {
			defer s.survive(frame.Stream)
			switch frame.Type {
			case TypeHelloRequest:
				s.hello()
			case TypeExec:
				s.async(frame, execCommand)
			case TypeCancel:
				s.cancel(frame.Stream)
			case TypeFileWrite:
				s.async(frame, writeFile)
			case TypeFileRead:
				s.async(frame, readFile)
			case TypeStat:
				s.async(frame, statFile)
			case TypeList:
				s.async(frame, listDir)
			case TypeProcessStart:
				s.async(frame, startProcess)
			case TypeProcessRead:
				s.async(frame, readProcess)
			case TypeProcessWait:
				s.async(frame, waitProcess)
			case TypeProcessWrite:
				s.writeProcess(frame)
			case TypeProcessSignal:
				s.inline(frame, signalProcess)
			case TypeProcessResize:
				s.inline(frame, resizeProcess)
			case TypeFault:
				s.async(frame, guestFault)
			case TypePersonalize:
				s.async(frame, personalize)
			default:
				s.fail(frame.Stream, codeInvalidArgument, fmt.Sprintf("unknown frame type %d", frame.Type))
			}
		}()
	}
}

// survive turns a panic while dispatching a frame into its request's error (see callSafely).
func (s *session) survive(stream uint32) {
	if recovered := recover(); recovered != nil {
		fmt.Fprintf(os.Stderr, "pcr-agent: panic serving stream %d: %v\n%s\n", stream, recovered, debug.Stack())
		s.fail(stream, codeFailedPrecondition, fmt.Sprintf("internal error: %v", recovered))
	}
}

// begin takes a slot for a request that answers later; when none is free it answers the refusal.
func (s *session) begin(stream uint32) (cancel chan struct{}, ok bool) {
	s.mu.Lock()
	_, taken := s.running[stream]
	inFlight := len(s.running)
	if !taken && inFlight < MaxConcurrent {
		cancel = make(chan struct{})
		s.running[stream] = cancel
	}
	s.mu.Unlock()
	switch {
	case taken:
		s.fail(stream, codeInvalidArgument, fmt.Sprintf("stream %d is in use", stream))
	case cancel == nil:
		s.fail(stream, codeResourceExhausted, fmt.Sprintf("%d requests are in flight (at most %d)", inFlight, MaxConcurrent))
	}
	return cancel, cancel != nil
}

// end gives the slot back (unless a cancel already did).
func (s *session) end(stream uint32, cancel chan struct{}) {
	s.mu.Lock()
	if s.running[stream] == cancel {
		delete(s.running, stream)
	}
	s.mu.Unlock()
}

func (s *session) cancel(stream uint32) {
	s.mu.Lock()
	if cancel, ok := s.running[stream]; ok {
		close(cancel)
		delete(s.running, stream)
	}
	s.mu.Unlock()
}

// answer is what a request gets back: its frame type and payload.
type answer struct {
	Type    byte
	Payload []byte
}

func jsonAnswer(frameType byte, body interface{}) (answer, error) {
	payload, err := json.Marshal(body)
	return answer{Type: frameType, Payload: payload}, err
}

func mixedAnswer(frameType byte, header interface{}, data []byte) (answer, error) {
	payload, err := encodeMixed(header, data)
	return answer{Type: frameType, Payload: payload}, err
}

// A handler serves one request; cancel closes when the host cancels it.
type handler func(payload []byte, cancel <-chan struct{}) (answer, error)

// async serves a request off the frame-reading loop (it may block on a file or wait for a
// process), within the bound on requests in flight.
func (s *session) async(frame Frame, handle handler) {
	cancel, ok := s.begin(frame.Stream)
	if !ok {
		return
	}
	go func() {
		result, err := callSafely(handle, frame.Payload, cancel)
		s.end(frame.Stream, cancel) // before the answer: the host may send the next request at once
		s.reply(frame.Stream, result, err)
	}()
}

// inline serves a quick request (no waiting) on the frame-reading loop.
func (s *session) inline(frame Frame, handle handler) {
	result, err := callSafely(handle, frame.Payload, nil)
	s.reply(frame.Stream, result, err)
}

// callSafely turns a handler's panic into its request's error: a bad request must not take the
// agent (and every other request) down.
func callSafely(handle handler, payload []byte, cancel <-chan struct{}) (result answer, err error) {
	defer func() {
		if recovered := recover(); recovered != nil {
			fmt.Fprintf(os.Stderr, "pcr-agent: panic serving a request: %v\n%s\n", recovered, debug.Stack())
			err = precondition("internal error: %v", recovered)
		}
	}()
	return handle(payload, cancel)
}

// reply sends a handler's answer, or its error.
func (s *session) reply(stream uint32, result answer, err error) {
	if err != nil {
		s.failWith(stream, err)
		return
	}
	s.sendPayload(result.Type, stream, result.Payload)
}

func (s *session) send(frameType byte, stream uint32, body interface{}) {
	payload, err := json.Marshal(body)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pcr-agent: encoding a frame of type %d failed: %v\n", frameType, err)
		return
	}
	s.sendPayload(frameType, stream, payload)
}

func (s *session) sendPayload(frameType byte, stream uint32, payload []byte) {
	encoded, err := encodeFrame(Frame{Type: frameType, Stream: stream, Payload: payload})
	if err == nil {
		s.writeMu.Lock()
		_, err = s.out.Write(encoded)
		s.writeMu.Unlock()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pcr-agent: sending a frame of type %d failed: %v\n", frameType, err)
	}
}

// Error codes the host accepts (docs/agent-protocol.md); anything else it reads as FAILED_PRECONDITION.
const (
	codeInvalidArgument    = "INVALID_ARGUMENT"
	codeNotFound           = "NOT_FOUND"
	codeAlreadyExists      = "ALREADY_EXISTS"
	codeFailedPrecondition = "FAILED_PRECONDITION"
	codeResourceExhausted  = "RESOURCE_EXHAUSTED"
)

// maxMessage keeps an error's message well inside the host's bound (4096 characters), whatever
// path or command it quotes.
const maxMessage = 1024

// fail answers a request with an error; code is one of the codes above, or "" for none.
func (s *session) fail(stream uint32, code, message string) {
	if len(message) > maxMessage {
		cut := maxMessage
		for cut > 0 && !utf8.RuneStart(message[cut]) {
			cut--
		}
		message = message[:cut] + "..."
	}
	body := map[string]string{"message": message}
	if code != "" {
		body["code"] = code
	}
	s.send(TypeError, stream, body)
}

// failWith answers a request with err, its code told by what err is.
func (s *session) failWith(stream uint32, err error) {
	s.fail(stream, errorCode(err), err.Error())
}

// requestError is an error with the code the host should see.
type requestError struct {
	code    string
	message string
}

func (e *requestError) Error() string { return e.message }

func invalid(format string, args ...interface{}) error {
	return &requestError{codeInvalidArgument, fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...interface{}) error {
	return &requestError{codeNotFound, fmt.Sprintf(format, args...)}
}

func precondition(format string, args ...interface{}) error {
	return &requestError{codeFailedPrecondition, fmt.Sprintf(format, args...)}
}

func exhausted(format string, args ...interface{}) error {
	return &requestError{codeResourceExhausted, fmt.Sprintf(format, args...)}
}

func errorCode(err error) string {
	var coded *requestError
	var syntax *json.SyntaxError
	var wrongType *json.UnmarshalTypeError
	var errno syscall.Errno
	switch {
	case errors.As(err, &coded):
		return coded.code
	case errors.As(err, &syntax), errors.As(err, &wrongType):
		return codeInvalidArgument
	case errors.Is(err, exec.ErrNotFound):
		return codeNotFound
	case errors.As(err, &errno):
		switch errno {
		case syscall.ENOENT:
			return codeNotFound
		case syscall.EEXIST:
			return codeAlreadyExists
		case syscall.EISDIR, syscall.ENOTDIR, syscall.EINVAL, syscall.ENAMETOOLONG, syscall.ELOOP:
			return codeInvalidArgument
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG, syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM, syscall.EAGAIN:
			return codeResourceExhausted
		}
	}
	return codeFailedPrecondition
}

// decodeRequest reads a request's JSON; any fault in it is INVALID_ARGUMENT.
func decodeRequest(payload []byte, request interface{}) error {
	if err := json.Unmarshal(payload, request); err != nil {
		return invalid("bad request: %v", err)
	}
	return nil
}

func (s *session) hello() {
	s.send(TypeHello, 0, map[string]interface{}{"protocol": 1, "version": version, "uptimeMs": uptimeMs(), "pid": os.Getpid()})
}

// execCommand runs one command to its end (or its cancel) and answers its exit.
func execCommand(payload []byte, cancel <-chan struct{}) (answer, error) {
	var req ExecRequest
	if err := decodeRequest(payload, &req); err != nil {
		return answer{}, err
	}
	result, err := runExec(req, cancel)
	if err != nil {
		return answer{}, err
	}
	return jsonAnswer(TypeExit, result)
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
