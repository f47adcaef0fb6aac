// Long-running processes for the host: started once, then read by offset, written, signalled,
// resized and waited on by pid over many requests (docs/agent-protocol.md). The table outlives a
// channel (the worker may reconnect), is bounded, and is the authority: only pids it holds are
// touched.
package main

import (
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

const (
	// MaxProcesses bounds the table: running processes and exited ones not yet dropped.
	MaxProcesses = 128
	// keptExits: an exited process stays queryable until this many newer ones have exited.
	keptExits = 64
	// outputKept is how many of the most recent bytes each output stream keeps.
	outputKept = 1 << 20
	// stdinQueueBytes bounds the bytes queued for one process's stdin.
	stdinQueueBytes = 1 << 20
	// maxWaitMs bounds a long poll (the host's own deadline is its wait plus a grace).
	maxWaitMs = 24 * 3600 * 1000
)

type processStartRequest struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	Cwd  string   `json:"cwd"`
	Tty  *struct {
		Rows int64 `json:"rows"`
		Cols int64 `json:"cols"`
	} `json:"tty"`
}

type processReadRequest struct {
	Pid      int    `json:"pid"`
	Stream   string `json:"stream"`
	Offset   int64  `json:"offset"`
	MaxBytes int64  `json:"maxBytes"`
	WaitMs   int64  `json:"waitMs"`
}

type processWriteRequest struct {
	Pid   int  `json:"pid"`
	Close bool `json:"close"`
}

type processSignalRequest struct {
	Pid    int `json:"pid"`
	Signal int `json:"signal"`
}

type processWaitRequest struct {
	Pid    int   `json:"pid"`
	WaitMs int64 `json:"waitMs"`
}

type processResizeRequest struct {
	Pid  int   `json:"pid"`
	Rows int64 `json:"rows"`
	Cols int64 `json:"cols"`
}

type process struct {
	pid      int
	cmd      *exec.Cmd
	terminal *os.File // the pty's master; nil without a tty
	stdout   *output
	stderr   *output
	stdin    *stdinWriter
	// The pipes' read ends: closed when the entry is dropped, which ends a pump that a leftover
	// child keeps from its end of file.
	pipes []*os.File
	done  chan struct{} // closed at exit, after exitCode and signal are set
	// exitCode is -1 when a signal ended the process.
	exitCode int
	signal   int
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// release closes what the process still holds in the agent.
func (p *process) release() {
	for _, pipe := range p.pipes {
		pipe.Close()
	}
	if p.terminal != nil {
		p.terminal.Close()
	}
	p.stdin.stop("the process was dropped")
}

// processTable holds the processes the host started. Exited ones are dropped oldest first: when
// keptExits newer ones have exited, or when a start needs the room.
type processTable struct {
	mu    sync.Mutex
	byPid map[int]*process
	// exitOrder lists the exited processes still held, oldest first.
	exitOrder []int
	// starting counts starts under way, against the bound.
	starting int
}

var processes = &processTable{byPid: map[int]*process{}}

func (t *processTable) reserve() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.byPid)+t.starting >= MaxProcesses {
		if len(t.exitOrder) == 0 {
			return exhausted("%d processes are running (at most %d)", len(t.byPid)+t.starting, MaxProcesses)
		}
		t.dropLocked(t.exitOrder[0])
	}
	t.starting++
	return nil
}

func (t *processTable) unreserve() {
	t.mu.Lock()
	t.starting--
	t.mu.Unlock()
}

func (t *processTable) add(p *process) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.starting--
	// The kernel reuses pids: an entry under this one is an older process, already reaped.
	if _, held := t.byPid[p.pid]; held {
		t.dropLocked(p.pid)
	}
	t.byPid[p.pid] = p
}

func (t *processTable) lookup(pid int) (*process, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.byPid[pid]; ok {
		return p, nil
	}
	return nil, notFound("no process %d was started here (or it exited long ago)", pid)
}

// exited records an exit and drops the oldest exits beyond keptExits.
func (t *processTable) exited(p *process) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byPid[p.pid] != p {
		return // dropped already (its pid was reused)
	}
	t.exitOrder = append(t.exitOrder, p.pid)
	for len(t.exitOrder) > keptExits {
		t.dropLocked(t.exitOrder[0])
	}
}

func (t *processTable) dropLocked(pid int) {
	p, ok := t.byPid[pid]
	if !ok {
		return
	}
	delete(t.byPid, pid)
	for index, exitedPid := range t.exitOrder {
		if exitedPid == pid {
			t.exitOrder = append(t.exitOrder[:index], t.exitOrder[index+1:]...)
			break
		}
	}
	p.release()
}

func startProcess(payload []byte, _ <-chan struct{}) (answer, error) {
	var req processStartRequest
	if err := decodeRequest(payload, &req); err != nil {
		return answer{}, err
	}
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return answer{}, invalid("argv is empty")
	}
	if req.Tty != nil {
		if err := checkWindow(req.Tty.Rows, req.Tty.Cols); err != nil {
			return answer{}, err
		}
	}
	if err := processes.reserve(); err != nil {
		return answer{}, err
	}
	added := false
	defer func() {
		if !added {
			processes.unreserve()
		}
	}()
	p, err := launch(req)
	if err != nil {
		return answer{}, err
	}
	// In the table before anything can see it exit.
	processes.add(p)
	added = true
	p.run()
	return jsonAnswer(TypeProcessStarted, map[string]int{"pid": p.pid})
}

func checkWindow(rows, cols int64) error {
	if rows < 1 || rows > 0xffff || cols < 1 || cols > 0xffff {
		return invalid("a terminal of %d rows and %d columns (each 1 to 65535)", rows, cols)
	}
	return nil
}

// launch starts the process: its own process group, or with a tty its own session with the
// terminal as its controlling one.
func launch(req processStartRequest) (*process, error) {
	cmd := exec.Command(req.Argv[0], req.Argv[1:]...)
	cmd.Env = req.Env
	if len(cmd.Env) == 0 {
		cmd.Env = []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root"}
	}
	cmd.Dir = req.Cwd
	p := &process{cmd: cmd, stdout: newOutput(), stderr: newOutput(), done: make(chan struct{})}
	// The child's ends, closed here once it has them: an end left open in the agent would keep
	// the stream from ever ending.
	var childEnds []*os.File
	var ours []*os.File
	closeAll := func(files []*os.File) {
		for _, file := range files {
			file.Close()
		}
	}
	if req.Tty != nil {
		master, slave, err := openPty(uint16(req.Tty.Rows), uint16(req.Tty.Cols))
		if err != nil {
			return nil, err
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		childEnds, ours = []*os.File{slave}, []*os.File{master}
		p.terminal = master
		p.stdin = newStdinWriter(master, false)
	} else {
		var files [6]*os.File // stdin's read and write ends, stdout's, stderr's
		for index := 0; index < 3; index++ {
			read, write, err := os.Pipe()
			if err != nil {
				closeAll(files[:2*index])
				return nil, err
			}
			files[2*index], files[2*index+1] = read, write
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = files[0], files[3], files[5]
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		childEnds, ours = []*os.File{files[0], files[3], files[5]}, []*os.File{files[1], files[2], files[4]}
		p.stdin = newStdinWriter(files[1], true)
		p.pipes = []*os.File{files[2], files[4]}
	}
	err := cmd.Start()
	closeAll(childEnds)
	if err != nil {
		closeAll(ours)
		return nil, err
	}
	p.pid = cmd.Process.Pid
	return p, nil
}

// run starts the goroutines that serve a process once it is in the table: output pumps, the
// stdin writer, and the one that waits for its exit.
func (p *process) run() {
	if p.terminal != nil {
		go pump(p.terminal, p.stdout, false)
	} else {
		go pump(p.pipes[0], p.stdout, true)
		go pump(p.pipes[1], p.stderr, true)
	}
	go p.stdin.run()
	go func() {
		_ = p.cmd.Wait() // the status is in ProcessState; a non-exit error leaves it nil
		p.exitCode, p.signal = -1, 0
		if state := p.cmd.ProcessState; state != nil {
			status := state.Sys().(syscall.WaitStatus)
			if status.Signaled() {
				p.signal = int(status.Signal())
			} else {
				p.exitCode = status.ExitStatus()
			}
		}
		p.stdin.stop("the process exited")
		if p.terminal != nil {
			p.stderr.close() // a terminal's process has no stderr of its own
		}
		close(p.done)
		processes.exited(p)
	}()
}

// pump copies one output stream into its buffer until it ends. A pty's master reads EIO once no
// process holds the terminal any more: that, like any error, is the stream's end.
func pump(file *os.File, out *output, closeAtEnd bool) {
	buffer := make([]byte, 32*1024)
	for {
		n, err := file.Read(buffer)
		if n > 0 {
			out.append(buffer[:n])
		}
		if err != nil {
			out.close()
			if closeAtEnd {
				file.Close()
			}
			return
		}
	}
}

func readProcess(payload []byte, cancel <-chan struct{}) (answer, error) {
	var req processReadRequest
	if err := decodeRequest(payload, &req); err != nil {
		return answer{}, err
	}
	if err := checkOffset(req.Offset); err != nil {
		return answer{}, err
	}
	if req.MaxBytes < 0 || req.MaxBytes > MaxChunk {
		return answer{}, invalid("maxBytes %d is out of range (at most %d)", req.MaxBytes, MaxChunk)
	}
	if req.WaitMs < 0 {
		return answer{}, invalid("waitMs %d is negative", req.WaitMs)
	}
	p, err := processes.lookup(req.Pid)
	if err != nil {
		return answer{}, err
	}
	var out *output
	switch req.Stream {
	case "stdout":
		out = p.stdout
	case "stderr":
		out = p.stderr
	default:
		return answer{}, invalid("stream %q is neither stdout nor stderr", req.Stream)
	}
	timer := time.NewTimer(waitDuration(req.WaitMs))
	defer timer.Stop()
	for {
		chunk := out.read(req.Offset, int(req.MaxBytes))
		if len(chunk.data) > 0 || chunk.eof || req.MaxBytes == 0 {
			return chunk.answer()
		}
		select {
		case <-chunk.changed:
		case <-timer.C:
			return chunk.answer()
		case <-cancel:
			return chunk.answer()
		}
	}
}

func waitDuration(waitMs int64) time.Duration {
	if waitMs > maxWaitMs {
		waitMs = maxWaitMs
	}
	return time.Duration(waitMs) * time.Millisecond
}

// writeProcess queues bytes for a process's stdin. It runs on the frame-reading loop, so that
// writes keep their order; the answer comes when the bytes are written.
func (s *session) writeProcess(frame Frame) {
	header, data, err := decodeMixed(frame.Payload)
	var req processWriteRequest
	if err == nil {
		err = decodeRequest(header, &req)
	}
	var p *process
	if err == nil {
		p, err = processes.lookup(req.Pid)
	}
	if err == nil && p.exited() {
		err = precondition("process %d has exited", req.Pid)
	}
	if err != nil {
		s.failWith(frame.Stream, err)
		return
	}
	cancel, ok := s.begin(frame.Stream)
	if !ok {
		return
	}
	written := func(err error) {
		s.end(frame.Stream, cancel)
		if err != nil {
			s.failWith(frame.Stream, err)
			return
		}
		s.send(TypeOK, frame.Stream, struct{}{})
	}
	if err := p.stdin.enqueue(&stdinWrite{data: data, close: req.Close, cancel: cancel, done: written}); err != nil {
		s.end(frame.Stream, cancel)
		s.failWith(frame.Stream, err)
	}
}

func signalProcess(payload []byte, _ <-chan struct{}) (answer, error) {
	var req processSignalRequest
	if err := decodeRequest(payload, &req); err != nil {
		return answer{}, err
	}
	if req.Signal < 1 || req.Signal > 64 {
		return answer{}, invalid("signal %d is out of range (1 to 64)", req.Signal)
	}
	p, err := processes.lookup(req.Pid)
	if err != nil {
		return answer{}, err
	}
	if p.pid <= 1 {
		return answer{}, invalid("pid %d", p.pid) // never kill(-1) or kill(0): the table cannot hold them
	}
	// To the whole group: what the process started goes too. ESRCH: the group is already gone.
	if err := syscall.Kill(-p.pid, syscall.Signal(req.Signal)); err != nil && err != syscall.ESRCH {
		return answer{}, err
	}
	return jsonAnswer(TypeOK, struct{}{})
}

func waitProcess(payload []byte, cancel <-chan struct{}) (answer, error) {
	var req processWaitRequest
	if err := decodeRequest(payload, &req); err != nil {
		return answer{}, err
	}
	if req.WaitMs < 0 {
		return answer{}, invalid("waitMs %d is negative", req.WaitMs)
	}
	p, err := processes.lookup(req.Pid)
	if err != nil {
		return answer{}, err
	}
	if !p.exited() && req.WaitMs > 0 {
		timer := time.NewTimer(waitDuration(req.WaitMs))
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
		case <-cancel:
		}
	}
	status := map[string]interface{}{"pid": p.pid, "running": true, "exitCode": -1, "signal": 0}
	if p.exited() {
		status["running"], status["exitCode"], status["signal"] = false, p.exitCode, p.signal
	}
	return jsonAnswer(TypeProcessStatus, status)
}

func resizeProcess(payload []byte, _ <-chan struct{}) (answer, error) {
	var req processResizeRequest
	if err := decodeRequest(payload, &req); err != nil {
		return answer{}, err
	}
	if err := checkWindow(req.Rows, req.Cols); err != nil {
		return answer{}, err
	}
	p, err := processes.lookup(req.Pid)
	if err != nil {
		return answer{}, err
	}
	if p.terminal == nil {
		return answer{}, invalid("process %d has no terminal", req.Pid)
	}
	if err := resizePty(p.terminal, uint16(req.Rows), uint16(req.Cols)); err != nil {
		return answer{}, err
	}
	return jsonAnswer(TypeOK, struct{}{})
}
