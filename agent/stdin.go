// A process's stdin, written for the host in order without blocking the channel.
package main

import (
	"os"
	"sync"
	"time"
)

// stdinWriter writes a process's stdin in its own goroutine, in order, from a bounded queue: a
// process that does not read must not block the frame-reading loop.
type stdinWriter struct {
	file *os.File
	// pipe: a close closes it (end of file); a terminal ignores a close.
	pipe bool
	mu   sync.Mutex
	// queue holds writes not yet begun; queued counts their bytes.
	queue  []*stdinWrite
	queued int
	// closedBecause is set when nothing more is taken: a close was asked for, or the process ended.
	closedBecause string
	stopped       bool
	wake          chan struct{}
}

type stdinWrite struct {
	data   []byte
	close  bool
	cancel <-chan struct{}
	done   func(error)
}

func newStdinWriter(file *os.File, pipe bool) *stdinWriter {
	return &stdinWriter{file: file, pipe: pipe, wake: make(chan struct{}, 1)}
}

func (w *stdinWriter) enqueue(write *stdinWrite) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closedBecause != "" {
		return precondition("stdin is closed: %s", w.closedBecause)
	}
	if w.queued+len(write.data) > stdinQueueBytes {
		return exhausted("%d bytes are already queued for the process's stdin (at most %d)", w.queued, stdinQueueBytes)
	}
	w.queue = append(w.queue, write)
	w.queued += len(write.data)
	if write.close && w.pipe {
		w.closedBecause = "the host closed it"
	}
	w.signal()
	return nil
}

func (w *stdinWriter) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *stdinWriter) run() {
	for {
		w.mu.Lock()
		if len(w.queue) == 0 {
			stopped := w.stopped
			w.mu.Unlock()
			if stopped {
				return
			}
			<-w.wake
			continue
		}
		write := w.queue[0]
		w.queue = w.queue[1:]
		w.queued -= len(write.data)
		w.mu.Unlock()
		var err error
		select {
		case <-write.cancel:
			err = precondition("the write was cancelled before it began")
		default:
			if len(write.data) > 0 {
				_, err = w.file.Write(write.data)
			}
			if err == nil && write.close && w.pipe {
				err = w.file.Close()
			}
		}
		if err != nil {
			if _, coded := err.(*requestError); !coded {
				err = precondition("writing stdin: %v", err)
			}
		}
		write.done(err)
	}
}

// stop ends the writer: queued writes fail, a write under way is interrupted, a pipe is closed.
func (w *stdinWriter) stop(reason string) {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	w.stopped = true
	if w.closedBecause == "" {
		w.closedBecause = reason
	}
	abandoned := w.queue
	w.queue, w.queued = nil, 0
	w.mu.Unlock()
	w.signal()
	if w.pipe {
		w.file.Close()
	} else {
		// The master stays open for the output still to read; a deadline ends a blocked write.
		_ = w.file.SetWriteDeadline(time.Now())
	}
	// Answered apart: stop may run under the table's lock, and an answer may wait on the channel.
	go func() {
		for _, write := range abandoned {
			write.done(precondition("stdin is closed: %s", reason))
		}
	}()
}
