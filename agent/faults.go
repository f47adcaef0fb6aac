// In-guest faults for the host (docs/faults.md): signal, freeze and thaw processes, step or strobe
// the realtime clock, fill a filesystem. The agent remembers what it did (frozen pids, the net
// clock step, strobes, fill files) in /run/pcr-agent/faults.json, so that "reset" undoes all of
// it after the worker restarted (it forgets its faults) or the agent itself did.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
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
