// The agent's side of the framed protocol (docs/agent-protocol.md): a 16-byte header, then a
// bounded payload. The host is trusted more than the guest, but a frame is still checked before use.
package main

import (
	"encoding/binary"
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
	TypeError        byte = 5 // agent -> host, JSON {"message"}
	TypeCancel       byte = 6 // host -> agent, no payload: kill that stream's process
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
