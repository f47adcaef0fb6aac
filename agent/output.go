// A process's output stream, kept for readers that come and go: the host reads it by offset over
// many requests (docs/agent-protocol.md, Processes).
package main

import (
	"sync"
)

// output keeps the most recent outputKept bytes of a stream, addressed by absolute offsets (bytes
// ever produced), so that a reader resumes where it was and sees what it missed.
type output struct {
	mu sync.Mutex
	// kept grows to outputKept, then is a ring: the byte at offset o is at o % outputKept.
	kept   []byte
	total  int64
	closed bool
	// changed is closed (and replaced) at every append and at the close: it wakes long polls.
	changed chan struct{}
}

func newOutput() *output {
	return &output{changed: make(chan struct{})}
}

func (o *output) append(data []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for len(data) > 0 {
		at := int(o.total % outputKept)
		if len(o.kept) < outputKept {
			o.grow(len(data))
		}
		n := copy(o.kept[at:], data)
		o.total += int64(n)
		data = data[n:]
	}
	o.wakeLocked()
}

// grow makes room for more bytes while kept is short of outputKept (then it stays that size):
// memory follows what a stream produced.
func (o *output) grow(more int) {
	want := len(o.kept) + more
	if want > outputKept {
		want = outputKept
	}
	if want > cap(o.kept) {
		capacity := 2 * cap(o.kept)
		if capacity < 64*1024 {
			capacity = 64 * 1024
		}
		if capacity < want {
			capacity = want
		}
		if capacity > outputKept {
			capacity = outputKept
		}
		grown := make([]byte, len(o.kept), capacity)
		copy(grown, o.kept)
		o.kept = grown
	}
	o.kept = o.kept[:want]
}

func (o *output) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.closed {
		o.closed = true
		o.wakeLocked()
	}
}

func (o *output) wakeLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// outputChunk is one read of a stream, and what to wait on for the next.
type outputChunk struct {
	offset  int64
	data    []byte
	eof     bool
	changed <-chan struct{}
}

func (c outputChunk) answer() (answer, error) {
	header := map[string]interface{}{"offset": c.offset, "nextOffset": c.offset + int64(len(c.data)), "eof": c.eof}
	return mixedAnswer(TypeProcessOutput, header, c.data)
}

// read answers up to max bytes from offset, or from the oldest byte kept when the ones asked for
// were dropped. eof: the stream has ended and nothing is left past the chunk.
func (o *output) read(offset int64, max int) outputChunk {
	o.mu.Lock()
	defer o.mu.Unlock()
	start := offset
	if oldest := o.total - int64(len(o.kept)); start < oldest {
		start = oldest
	}
	var data []byte
	if start < o.total {
		n := o.total - start
		if n > int64(max) {
			n = int64(max)
		}
		data = make([]byte, n)
		for copied := 0; copied < len(data); {
			copied += copy(data[copied:], o.kept[(start+int64(copied))%outputKept:])
		}
	}
	end := start + int64(len(data))
	return outputChunk{offset: start, data: data, eof: o.closed && end >= o.total, changed: o.changed}
}
