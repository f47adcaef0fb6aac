// In-guest faults on processes: which ones a request names, and signalling, freezing and thawing them.
package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

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
