// In-guest faults for the host (docs/faults.md): signal, freeze and thaw processes, step or strobe
// the realtime clock, fill a filesystem. The agent remembers what it did (frozen pids, the net
// clock step, strobes, fill files) in /run/pcr-agent/faults.json, so that "reset" undoes all of
// it after the worker restarted (it forgets its faults) or the agent itself did.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Frame types of in-guest faults.
const (
	TypeFault     byte = 25 // host -> agent, JSON {kind, ...} (worker/ports/agent.ts GuestFault)
	TypeFaultDone byte = 26 // agent -> host, JSON {pids, bytes}
)

const (
	faultStateDir  = "/run/pcr-agent"
	faultStateFile = faultStateDir + "/faults.json"
	// The largest clock step: ten years either way.
	maxClockStepMs = 10 * 366 * 24 * 3600 * 1000
	minStrobeMs    = 50
	maxStrobeMs    = 3600 * 1000
	fillChunk      = 1 << 20
	// PF_KTHREAD in /proc/<pid>/stat's flags: a kernel thread, never signalled.
	pfKthread = 0x00200000
	// Most pids one answer lists (the worker's bound); more are signalled but not listed.
	maxAnswerPids = 65536
)

var faultIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$`)

// faultRequest is every kind's fields; each kind checks that it has what it needs.
type faultRequest struct {
	Kind     string  `json:"kind"`
	Pid      *int64  `json:"pid"`
	Name     *string `json:"name"`
	Signal   *int64  `json:"signal"`
	Pids     []int64 `json:"pids"`
	DeltaMs  *int64  `json:"deltaMs"`
	PeriodMs *int64  `json:"periodMs"`
	ID       *string `json:"id"`
	Dir      *string `json:"dir"`
}

type faultAnswer struct {
	Pids  []int `json:"pids"`
	Bytes int64 `json:"bytes"`
}

// guestFault serves one fault request (main.go runs it off the frame loop, within the bound on
// requests in flight, and turns a panic into an error answer). cancel ends a fill early.
func guestFault(payload []byte, cancel <-chan struct{}) (answer, error) {
	result, err := guestFaults.handle(payload, cancel)
	if err != nil {
		return answer{}, err
	}
	if result.Pids == nil {
		result.Pids = []int{}
	}
	return jsonAnswer(TypeFaultDone, result)
}

func alreadyExists(format string, args ...interface{}) error {
	return &requestError{codeAlreadyExists, fmt.Sprintf(format, args...)}
}

// --- memory ----------------------------------------------------------------------------------

type frozenProcess struct {
	Pid int `json:"pid"`
	// The process's start time (clock ticks after boot): a pid reused by another process is not it.
	Start uint64 `json:"start"`
	// How many freezes hold it: the last thaw continues it.
	Count int `json:"count"`
}

type strobe struct {
	DeltaNs  int64 `json:"deltaNs"`
	PeriodMs int64 `json:"periodMs"`
	// The clock is stepped +delta right now.
	Up   bool `json:"up"`
	stop chan struct{}
	done chan struct{}
}

// faultMemory is what the agent did and has not undone, as persisted.
type faultMemory struct {
	mu sync.Mutex
	// Loaded from the state file on first use (an agent started after another left faults).
	loaded bool
	Frozen map[int]*frozenProcess `json:"frozen"`
	// The sum of the clock steps applied and not yet undone (shifts and strobes' up phases).
	OffsetNs int64              `json:"offsetNs"`
	Strobes  map[string]*strobe `json:"strobes"`
	// Fill files by fault id.
	Fills map[string]string `json:"fills"`
}

var guestFaults = &faultMemory{}

// load reads what a previous agent left; called with mu held. A strobe that agent ran is held in
// its phase (no goroutine runs it) until it is stopped or reset, which step the clock back.
func (m *faultMemory) load() {
	if m.loaded {
		return
	}
	m.loaded = true
	m.Frozen, m.Strobes, m.Fills = map[int]*frozenProcess{}, map[string]*strobe{}, map[string]string{}
	text, err := os.ReadFile(faultStateFile)
	if err != nil {
		return
	}
	var saved faultMemory
	if err := json.Unmarshal(text, &saved); err != nil {
		fmt.Fprintf(os.Stderr, "pcr-agent: ignoring unreadable %s: %v\n", faultStateFile, err)
		return
	}
	m.OffsetNs = saved.OffsetNs
	for pid, frozen := range saved.Frozen {
		if frozen != nil && pid > 1 && frozen.Count > 0 {
			m.Frozen[pid] = frozen
		}
	}
	for id, st := range saved.Strobes {
		if st != nil {
			m.Strobes[id] = &strobe{DeltaNs: st.DeltaNs, PeriodMs: st.PeriodMs, Up: st.Up}
		}
	}
	for id, path := range saved.Fills {
		m.Fills[id] = path
	}
}

// save writes the memory down (temp file, rename); called with mu held. A failure is logged: the
// faults still work, only an agent restart would forget them.
func (m *faultMemory) save() {
	text, err := json.Marshal(m)
	if err == nil {
		if err = os.MkdirAll(faultStateDir, 0o700); err == nil {
			tmp := faultStateFile + ".tmp"
			if err = os.WriteFile(tmp, text, 0o600); err == nil {
				err = os.Rename(tmp, faultStateFile)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pcr-agent: cannot save the fault state: %v\n", err)
	}
}

func (m *faultMemory) handle(payload []byte, cancel <-chan struct{}) (faultAnswer, error) {
	var req faultRequest
	if err := decodeRequest(payload, &req); err != nil {
		return faultAnswer{}, err
	}
	switch req.Kind {
	case "kill":
		if req.Signal == nil || *req.Signal < 1 || *req.Signal > 64 {
			return faultAnswer{}, invalid("kill needs a signal between 1 and 64")
		}
		return m.kill(req, syscall.Signal(*req.Signal))
	case "freeze":
		return m.freeze(req)
	case "thaw":
		return m.thaw(req.Pids)
	case "clockShift":
		delta, err := clockDelta(req.DeltaMs)
		if err != nil {
			return faultAnswer{}, err
		}
		return m.shiftClock(delta)
	case "clockStrobe":
		return m.startStrobe(req)
	case "clockStrobeStop":
		if req.ID == nil || !faultIDPattern.MatchString(*req.ID) {
			return faultAnswer{}, invalid("clockStrobeStop needs an id")
		}
		return m.stopStrobe(*req.ID)
	case "fillDisk":
		path, err := fillPath(req)
		if err != nil {
			return faultAnswer{}, err
		}
		return m.fill(*req.ID, path, cancel)
	case "unfillDisk":
		path, err := fillPath(req)
		if err != nil {
			return faultAnswer{}, err
		}
		return m.unfill(*req.ID, path)
	case "reset":
		return m.reset()
	default:
		return faultAnswer{}, invalid("unknown fault kind %q", req.Kind)
	}
}

// --- processes -------------------------------------------------------------------------------

type procInfo struct {
	pid    int
	state  byte
	flags  uint64
	start  uint64
	comm   string
	argv0  string
	exists bool
}

// readProc reads /proc/<pid>/stat (and cmdline); exists is false when the process is gone.
func readProc(pid int) procInfo {
	info := procInfo{pid: pid}
	text, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return info
	}
	stat := string(text)
	// comm may hold spaces and parentheses: it ends at the last ')'.
	open, end := strings.IndexByte(stat, '('), strings.LastIndexByte(stat, ')')
	if open < 0 || end < open {
		return info
	}
	fields := strings.Fields(stat[end+1:])
	if len(fields) < 20 {
		return info
	}
	info.comm = stat[open+1 : end]
	info.state = fields[0][0]
	info.flags, _ = strconv.ParseUint(fields[6], 10, 64)
	info.start, _ = strconv.ParseUint(fields[19], 10, 64)
	if cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil {
		if i := strings.IndexByte(string(cmdline), 0); i >= 0 {
			cmdline = cmdline[:i]
		}
		info.argv0 = filepath.Base(string(cmdline))
	}
	info.exists = true
	return info
}

// untouchable says why a process may never be signalled, or "".
func untouchable(info procInfo) string {
	switch {
	case info.pid == 1:
		return "it is the guest's init"
	case info.pid == os.Getpid():
		return "it is the agent itself"
	case info.flags&pfKthread != 0:
		return "it is a kernel thread"
	}
	return ""
}

func exited(info procInfo) bool { return info.state == 'Z' || info.state == 'X' }

// targets finds the processes a kill or freeze means: the one pid, or every process whose comm or
// argv[0]'s base name is the name (never init, the agent, kernel threads or zombies).
func targets(req faultRequest) ([]procInfo, error) {
	byPid := req.Pid != nil && *req.Pid != 0
	byName := req.Name != nil && *req.Name != ""
	if byPid == byName {
		return nil, invalid("%s needs exactly one of pid and name", req.Kind)
	}
	if byPid {
		if *req.Pid < 1 || *req.Pid > 1<<22 {
			return nil, invalid("pid %d is out of range", *req.Pid)
		}
		info := readProc(int(*req.Pid))
		if !info.exists || exited(info) {
			return nil, notFound("no process %d in the guest", *req.Pid)
		}
		if why := untouchable(info); why != "" {
			return nil, invalid("will not signal pid %d: %s", info.pid, why)
		}
		return []procInfo{info}, nil
	}
	name := *req.Name
	if len(name) > 255 || strings.ContainsAny(name, "/\x00") {
		return nil, invalid("bad process name %q", name)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, precondition("cannot list /proc: %v", err)
	}
	var found []procInfo
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil || pid < 1 {
			continue
		}
		info := readProc(pid)
		if !info.exists || exited(info) || untouchable(info) != "" {
			continue
		}
		if info.comm == name || info.argv0 == name {
			found = append(found, info)
		}
	}
	if len(found) == 0 {
		return nil, notFound("no process named %q in the guest", name)
	}
	return found, nil
}

// signalAll sends sig to each process; those gone meanwhile are left out of the answer.
func signalAll(procs []procInfo, sig syscall.Signal) ([]procInfo, error) {
	var reached []procInfo
	var firstErr error
	for _, info := range procs {
		if err := syscall.Kill(info.pid, sig); err != nil {
			if err != syscall.ESRCH && firstErr == nil {
				firstErr = err
			}
			continue
		}
		reached = append(reached, info)
	}
	if len(reached) == 0 {
		if firstErr != nil {
			return nil, precondition("cannot signal: %v", firstErr)
		}
		return nil, notFound("the processes exited before the signal")
	}
	return reached, nil
}

func pidsOf(procs []procInfo) []int {
	pids := make([]int, 0, len(procs))
	for _, info := range procs {
		if len(pids) < maxAnswerPids {
			pids = append(pids, info.pid)
		}
	}
	return pids
}

func (m *faultMemory) kill(req faultRequest, sig syscall.Signal) (faultAnswer, error) {
	procs, err := targets(req)
	if err != nil {
		return faultAnswer{}, err
	}
	reached, err := signalAll(procs, sig)
	if err != nil {
		return faultAnswer{}, err
	}
	return faultAnswer{Pids: pidsOf(reached)}, nil
}

func (m *faultMemory) freeze(req faultRequest) (faultAnswer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.load()
	procs, err := targets(req)
	if err != nil {
		return faultAnswer{}, err
	}
	reached, err := signalAll(procs, syscall.SIGSTOP)
	if err != nil {
		return faultAnswer{}, err
	}
	for _, info := range reached {
		frozen := m.Frozen[info.pid]
		if frozen == nil || frozen.Start != info.start {
			frozen = &frozenProcess{Pid: info.pid, Start: info.start}
			m.Frozen[info.pid] = frozen
		}
		frozen.Count++
	}
	m.save()
	return faultAnswer{Pids: pidsOf(reached)}, nil
}

// thaw continues the pids a freeze reached once no other freeze holds them. A pid the agent does
// not remember (its memory was lost) is continued if it is stopped.
func (m *faultMemory) thaw(pids []int64) (faultAnswer, error) {
	if len(pids) > maxAnswerPids {
		return faultAnswer{}, invalid("thaw of %d pids (at most %d)", len(pids), maxAnswerPids)
	}
	for _, pid := range pids {
		if pid < 2 || pid > 1<<22 {
			return faultAnswer{}, invalid("pid %d is out of range", pid)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.load()
	continued := []int{}
	for _, pid64 := range pids {
		pid := int(pid64)
		info := readProc(pid)
		frozen := m.Frozen[pid]
		if frozen != nil {
			if frozen.Count--; frozen.Count > 0 {
				continue
			}
			delete(m.Frozen, pid)
			if !info.exists || info.start != frozen.Start {
				continue // it ended (or the pid is another process's now)
			}
		} else if !info.exists || info.state != 'T' || untouchable(info) != "" {
			continue
		}
		if syscall.Kill(pid, syscall.SIGCONT) == nil {
			continued = append(continued, pid)
		}
	}
	m.save()
	return faultAnswer{Pids: continued}, nil
}

// --- the clock -------------------------------------------------------------------------------

func clockDelta(deltaMs *int64) (int64, error) {
	if deltaMs == nil || *deltaMs == 0 || *deltaMs > maxClockStepMs || *deltaMs < -maxClockStepMs {
		return 0, invalid("deltaMs must be non-zero and within ±%d", int64(maxClockStepMs))
	}
	return *deltaMs * int64(time.Millisecond), nil
}

// stepClock steps CLOCK_REALTIME by deltaNs. adjtimex's ADJ_SETOFFSET adds the offset inside the
// kernel, so a strobe's thousands of steps do not drift by the time each read-modify-write takes;
// settimeofday is the fallback for a kernel without it.
func stepClock(deltaNs int64) error {
	const adjSetOffset, adjNano = 0x0100, 0x2000
	sec, nsec := deltaNs/int64(time.Second), deltaNs%int64(time.Second)
	if nsec < 0 { // the kernel wants 0 <= nsec < 1e9
		sec, nsec = sec-1, nsec+int64(time.Second)
	}
	timex := syscall.Timex{Modes: adjSetOffset | adjNano, Time: syscall.Timeval{Sec: sec, Usec: nsec}}
	_, err := syscall.Adjtimex(&timex)
	if err == syscall.EINVAL || err == syscall.ENOSYS {
		target := time.Now().Add(time.Duration(deltaNs))
		tv := syscall.NsecToTimeval(target.UnixNano())
		if fallbackErr := syscall.Settimeofday(&tv); fallbackErr == nil {
			return nil
		}
	}
	return err
}

func (m *faultMemory) shiftClock(deltaNs int64) (faultAnswer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.load()
	if err := stepClock(deltaNs); err != nil {
		return faultAnswer{}, precondition("cannot step the clock by %v: %v", time.Duration(deltaNs), err)
	}
	m.OffsetNs += deltaNs
	m.save()
	return faultAnswer{}, nil
}

func (m *faultMemory) startStrobe(req faultRequest) (faultAnswer, error) {
	if req.ID == nil || !faultIDPattern.MatchString(*req.ID) {
		return faultAnswer{}, invalid("clockStrobe needs an id of letters, digits, '-', '_' and '.'")
	}
	delta, err := clockDelta(req.DeltaMs)
	if err != nil {
		return faultAnswer{}, err
	}
	if req.PeriodMs == nil || *req.PeriodMs < minStrobeMs || *req.PeriodMs > maxStrobeMs {
		return faultAnswer{}, invalid("periodMs must be within %d..%d", minStrobeMs, maxStrobeMs)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.load()
	if _, taken := m.Strobes[*req.ID]; taken {
		return faultAnswer{}, alreadyExists("a strobe %q runs already", *req.ID)
	}
	if err := stepClock(delta); err != nil {
		return faultAnswer{}, precondition("cannot step the clock: %v", err)
	}
	m.OffsetNs += delta
	st := &strobe{DeltaNs: delta, PeriodMs: *req.PeriodMs, Up: true, stop: make(chan struct{}), done: make(chan struct{})}
	m.Strobes[*req.ID] = st
	m.save()
	go m.runStrobe(st)
	return faultAnswer{}, nil
}

// runStrobe steps the clock back and forth each period until stopped; stopping undoes an up phase.
func (m *faultMemory) runStrobe(st *strobe) {
	defer close(st.done)
	ticker := time.NewTicker(time.Duration(st.PeriodMs) * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-st.stop:
			return
		case <-ticker.C:
		}
		m.mu.Lock()
		step := st.DeltaNs
		if st.Up {
			step = -step
		}
		if err := stepClock(step); err != nil {
			fmt.Fprintf(os.Stderr, "pcr-agent: strobe cannot step the clock: %v\n", err)
		} else {
			st.Up = !st.Up
			m.OffsetNs += step
			m.save()
		}
		m.mu.Unlock()
	}
}

// endStrobe stops a strobe's goroutine (if this agent runs it) and steps the clock back if it is
// up; called without mu, after the strobe left m.Strobes.
func (m *faultMemory) endStrobe(st *strobe) error {
	if st.stop != nil {
		close(st.stop)
		<-st.done
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !st.Up {
		return nil
	}
	if err := stepClock(-st.DeltaNs); err != nil {
		return err
	}
	st.Up = false
	m.OffsetNs -= st.DeltaNs
	m.save()
	return nil
}

func (m *faultMemory) stopStrobe(id string) (faultAnswer, error) {
	m.mu.Lock()
	m.load()
	st := m.Strobes[id]
	delete(m.Strobes, id)
	m.save()
	m.mu.Unlock()
	if st == nil {
		return faultAnswer{}, nil // already stopped (a reset got there first): nothing to undo
	}
	if err := m.endStrobe(st); err != nil {
		return faultAnswer{}, precondition("cannot step the clock back: %v", err)
	}
	return faultAnswer{}, nil
}

// --- filling a filesystem --------------------------------------------------------------------

func fillPath(req faultRequest) (string, error) {
	if req.ID == nil || !faultIDPattern.MatchString(*req.ID) {
		return "", invalid("%s needs an id of letters, digits, '-', '_' and '.'", req.Kind)
	}
	if req.Dir == nil || !filepath.IsAbs(*req.Dir) || len(*req.Dir) > 4096 || strings.ContainsRune(*req.Dir, 0) {
		return "", invalid("%s needs an absolute dir", req.Kind)
	}
	return filepath.Join(filepath.Clean(*req.Dir), ".pcr-fill-"+*req.ID), nil
}

// fill writes path in 1 MiB writes until the filesystem is full. The file is remembered before
// the first byte, so a reset meanwhile removes it too.
func (m *faultMemory) fill(id, path string, cancel <-chan struct{}) (faultAnswer, error) {
	dir, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return faultAnswer{}, notFound("%v", err)
	}
	if !dir.IsDir() {
		return faultAnswer{}, invalid("%s is not a directory", filepath.Dir(path))
	}
	m.mu.Lock()
	m.load()
	if _, taken := m.Fills[id]; taken {
		m.mu.Unlock()
		return faultAnswer{}, alreadyExists("a fill %q exists already", id)
	}
	m.Fills[id] = path
	m.save()
	m.mu.Unlock()
	forget := func() {
		m.mu.Lock()
		if m.Fills[id] == path {
			delete(m.Fills, id)
			m.save()
		}
		m.mu.Unlock()
	}

	file, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		forget()
		if errors.Is(err, os.ErrExist) {
			return faultAnswer{}, alreadyExists("%s exists already", path)
		}
		return faultAnswer{}, precondition("%v", err)
	}
	chunk := make([]byte, fillChunk)
	var written int64
	for {
		select {
		case <-cancel: // the host gave up: nothing it waits for may stay behind
			file.Close()
			os.Remove(path)
			forget()
			return faultAnswer{}, precondition("filling %s was cancelled after %d bytes", path, written)
		default:
		}
		n, err := file.Write(chunk)
		written += int64(n)
		if err == nil {
			continue
		}
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			break
		}
		file.Close()
		os.Remove(path)
		forget()
		return faultAnswer{}, precondition("filling %s: %v after %d bytes", path, err, written)
	}
	// Delayed allocation may report the last blocks only now; the filesystem is full either way.
	file.Sync()
	file.Close()
	return faultAnswer{Bytes: written}, nil
}

// unfill removes the fill file; one already gone is no error (nothing is left to free).
func (m *faultMemory) unfill(id, path string) (faultAnswer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.load()
	bytes, err := removeFill(path)
	if err != nil {
		return faultAnswer{}, precondition("%v", err)
	}
	delete(m.Fills, id)
	m.save()
	return faultAnswer{Bytes: bytes}, nil
}

func removeFill(path string) (int64, error) {
	info, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if !info.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is no fill file", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	return info.Size(), nil
}

// --- reset -----------------------------------------------------------------------------------

// reset undoes everything remembered: strobes stop, the clock steps back by the net offset,
// frozen processes continue, fill files go. What fails stays remembered and is reported.
func (m *faultMemory) reset() (faultAnswer, error) {
	m.mu.Lock()
	m.load()
	strobes := m.Strobes
	m.Strobes = map[string]*strobe{}
	m.mu.Unlock()
	var problems []string
	for _, st := range strobes {
		if st.stop != nil {
			close(st.stop)
			<-st.done
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	answer := faultAnswer{Pids: []int{}}
	// The strobes' up phases are in the offset too: one step undoes them all.
	if m.OffsetNs != 0 {
		if err := stepClock(-m.OffsetNs); err != nil {
			problems = append(problems, fmt.Sprintf("clock: %v", err))
		} else {
			m.OffsetNs = 0
		}
	}
	for pid, frozen := range m.Frozen {
		info := readProc(pid)
		if info.exists && info.start == frozen.Start && syscall.Kill(pid, syscall.SIGCONT) == nil {
			answer.Pids = append(answer.Pids, pid)
		}
		delete(m.Frozen, pid)
	}
	for id, path := range m.Fills {
		bytes, err := removeFill(path)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		answer.Bytes += bytes
		delete(m.Fills, id)
	}
	m.save()
	if len(problems) > 0 {
		return faultAnswer{}, precondition("reset left: %s", strings.Join(problems, "; "))
	}
	return answer, nil
}
