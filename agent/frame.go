// The agent's side of the framed protocol (docs/agent-protocol.md): a 16-byte header, then a
// bounded payload. The host is trusted more than the guest, but a frame is still checked before use.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

const (
	headerSize = 16
	// MaxPayload bounds every frame in both directions.
	MaxPayload = 256 * 1024
)

var magic = [4]byte{'P', 'C', 'R', '1'}

// Frame types.
const (
	TypeHelloRequest byte = 1 // host -> agent, stream 0, no payload
	TypeHello        byte = 2 // agent -> host, stream 0, JSON
	TypeExec         byte = 3 // host -> agent, JSON
	TypeExit         byte = 4 // agent -> host, JSON
	TypeError        byte = 5 // agent -> host, JSON {"message", "code"}
	TypeCancel       byte = 6 // host -> agent, no payload: kill that stream's process or end its wait

	// Files (files.go). "Mixed" payloads carry raw bytes after their JSON (encodeMixed).
	TypeFileWrite   byte = 7  // host -> agent, mixed {path, offset, mode, truncate} + bytes
	TypeFileWritten byte = 8  // agent -> host, JSON {size}
	TypeFileRead    byte = 9  // host -> agent, JSON {path, offset, length}
	TypeFileData    byte = 10 // agent -> host, mixed {size, eof} + bytes
	TypeStat        byte = 11 // host -> agent, JSON {path}
	TypeStatResult  byte = 12 // agent -> host, JSON stat
	TypeList        byte = 13 // host -> agent, JSON {path, offset}
	TypeListResult  byte = 14 // agent -> host, JSON {entries, truncated}

	// Long-running processes (process.go).
	TypeProcessStart   byte = 15 // host -> agent, JSON {argv, env, cwd, tty}
	TypeProcessStarted byte = 16 // agent -> host, JSON {pid}
	TypeProcessRead    byte = 17 // host -> agent, JSON {pid, stream, offset, maxBytes, waitMs}
	TypeProcessOutput  byte = 18 // agent -> host, mixed {offset, nextOffset, eof} + bytes
	TypeProcessWrite   byte = 19 // host -> agent, mixed {pid, close} + bytes
	TypeOK             byte = 20 // agent -> host, JSON {}
	TypeProcessSignal  byte = 21 // host -> agent, JSON {pid, signal}
	TypeProcessWait    byte = 22 // host -> agent, JSON {pid, waitMs}
	TypeProcessStatus  byte = 23 // agent -> host, JSON {pid, running, exitCode, signal}
	TypeProcessResize  byte = 24 // host -> agent, JSON {pid, rows, cols}
	// 25 and 26 (in-guest faults) are faults.go's.
)

type Frame struct {
	Type    byte
	Stream  uint32
	Payload []byte
}

var errBadFrame = errors.New("malformed frame")

func readFrame(r io.Reader) (Frame, error) {
	var header [headerSize]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return Frame{}, err
	}
	if [4]byte{header[0], header[1], header[2], header[3]} != magic {
		return Frame{}, fmt.Errorf("%w: bad magic", errBadFrame)
	}
	if header[5] != 0 || header[6] != 0 || header[7] != 0 {
		return Frame{}, fmt.Errorf("%w: reserved bytes set", errBadFrame)
	}
	length := binary.BigEndian.Uint32(header[12:16])
	if length > MaxPayload {
		return Frame{}, fmt.Errorf("%w: payload of %d bytes (at most %d)", errBadFrame, length, MaxPayload)
	}
	frame := Frame{Type: header[4], Stream: binary.BigEndian.Uint32(header[8:12]), Payload: make([]byte, length)}
	if _, err := io.ReadFull(r, frame.Payload); err != nil {
		return Frame{}, err
	}
	return frame, nil
}

func encodeFrame(frame Frame) ([]byte, error) {
	if len(frame.Payload) > MaxPayload {
		return nil, fmt.Errorf("payload of %d bytes exceeds %d", len(frame.Payload), MaxPayload)
	}
	out := make([]byte, headerSize+len(frame.Payload))
	copy(out, magic[:])
	out[4] = frame.Type
	binary.BigEndian.PutUint32(out[8:12], frame.Stream)
	binary.BigEndian.PutUint32(out[12:16], uint32(len(frame.Payload)))
	copy(out[headerSize:], frame.Payload)
	return out, nil
}

// encodeMixed makes a payload of JSON and raw bytes: a u32 big-endian length of the JSON, the
// JSON, then the bytes (file and process data, which base64 would grow by a third).
func encodeMixed(header interface{}, data []byte) ([]byte, error) {
	text, err := json.Marshal(header)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 4+len(text)+len(data))
	binary.BigEndian.PutUint32(out[:4], uint32(len(text)))
	copy(out[4:], text)
	copy(out[4+len(text):], data)
	return out, nil
}

// decodeMixed splits a mixed payload into its JSON and its bytes.
func decodeMixed(payload []byte) (header, data []byte, err error) {
	if len(payload) < 4 {
		return nil, nil, invalid("a mixed payload shorter than its length field")
	}
	length := binary.BigEndian.Uint32(payload[:4])
	if uint64(length) > uint64(len(payload)-4) {
		return nil, nil, invalid("a mixed payload's JSON of %d bytes overruns it", length)
	}
	return payload[4 : 4+length], payload[4+length:], nil
}
