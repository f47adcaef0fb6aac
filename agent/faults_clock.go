// In-guest faults on the clock: one step, or a strobe back and forth, each undone exactly.
package main

import (
	"fmt"
	"os"
	"syscall"
	"time"
)

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
