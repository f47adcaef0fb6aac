// Files for the host: chunked writes and reads, stat, and listings paged by index
// (docs/agent-protocol.md). Each call moves at most one chunk, so every answer fits a frame.
package main

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
)

// MaxChunk bounds the file or process bytes one request or answer carries: with its JSON it
// fits a frame.
const MaxChunk = 192 * 1024

// A listing stops short of these, so that its answer fits a frame.
const (
	maxListBytes   = 200 * 1024
	maxListEntries = 4096
	// More names than this in one directory is refused rather than read and sorted in memory.
	maxDirNames = 1 << 20
)

// maxSafe is the largest integer the host (JavaScript) reads exactly: sizes, offsets and times
// are bounded by it, so that an answer never breaks the host's schema.
const maxSafe = 1<<53 - 1

type fileWriteRequest struct {
	Path     string  `json:"path"`
	Offset   int64   `json:"offset"`
	Mode     *uint32 `json:"mode"`
	Truncate bool    `json:"truncate"`
}

type fileReadRequest struct {
	Path   string `json:"path"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
}

type statRequest struct {
	Path string `json:"path"`
}

type listRequest struct {
	Path   string `json:"path"`
	Offset int64  `json:"offset"`
}

// fileStat is one entry of a stat or list answer.
type fileStat struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Size    int64  `json:"size"`
	Mode    uint32 `json:"mode"`
	MtimeMs int64  `json:"mtimeMs"`
}

func checkPath(path string) error {
	if !filepath.IsAbs(path) {
		return invalid("path %q is not absolute", path)
	}
	return nil
}

func checkOffset(offset int64) error {
	if offset < 0 || offset > maxSafe {
		return invalid("offset %d is out of range", offset)
	}
	return nil
}

// checkPlace checks a request's absolute path and its byte (or entry) offset.
func checkPlace(path string, offset int64) error {
	if err := checkPath(path); err != nil {
		return err
	}
	return checkOffset(offset)
}

func writeFile(payload []byte, _ <-chan struct{}) (answer, error) {
	header, data, err := decodeMixed(payload)
	if err != nil {
		return answer{}, err
	}
	var req fileWriteRequest
	if err := decodeRequest(header, &req); err != nil {
		return answer{}, err
	}
	if err := checkPlace(req.Path, req.Offset); err != nil {
		return answer{}, err
	}
	if len(data) > MaxChunk {
		return answer{}, invalid("%d bytes in one write (at most %d)", len(data), MaxChunk)
	}
	if req.Offset+int64(len(data)) > maxSafe {
		return answer{}, invalid("a write past %d bytes", int64(maxSafe))
	}
	mode := uint32(0o644)
	if req.Mode != nil {
		if *req.Mode > 0o7777 {
			return answer{}, invalid("mode %o is not permission bits", *req.Mode)
		}
		mode = *req.Mode
	}
	if err := os.MkdirAll(filepath.Dir(req.Path), 0o755); err != nil {
		return answer{}, err
	}
	file, err := openForWrite(req.Path, mode)
	if err != nil {
		return answer{}, err
	}
	defer file.Close()
	if req.Truncate {
		if err := file.Truncate(req.Offset); err != nil {
			return answer{}, err
		}
	}
	if len(data) > 0 {
		if _, err := file.WriteAt(data, req.Offset); err != nil {
			return answer{}, err
		}
	}
	info, err := file.Stat()
	if err != nil {
		return answer{}, err
	}
	return jsonAnswer(TypeFileWritten, map[string]int64{"size": info.Size()})
}

// openForWrite opens a regular file for writing, creating it with exactly mode (not through the
// umask) when it is missing; an existing file keeps its own mode. O_NONBLOCK: a FIFO at the path
// must not block the call (it is refused below).
func openForWrite(path string, mode uint32) (*os.File, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var file *os.File
		file, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NONBLOCK, 0o600)
		if err == nil {
			if err = file.Chmod(goMode(mode)); err != nil {
				file.Close()
				return nil, err
			}
			return file, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		file, err = os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			return file, requireRegular(file)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		// Removed between the two opens: create it again.
	}
	return nil, err
}

// requireRegular closes file unless it is a regular file: devices, FIFOs and sockets can block
// or never end.
func requireRegular(file *os.File) error {
	info, err := file.Stat()
	if err == nil && !info.Mode().IsRegular() {
		err = invalid("%s is a %s, not a regular file", file.Name(), fileType(info))
	}
	if err != nil {
		file.Close()
	}
	return err
}

// goMode turns permission bits (as chmod(2) takes them) into an os.FileMode.
func goMode(mode uint32) os.FileMode {
	goMode := os.FileMode(mode & 0o777)
	if mode&syscall.S_ISUID != 0 {
		goMode |= os.ModeSetuid
	}
	if mode&syscall.S_ISGID != 0 {
		goMode |= os.ModeSetgid
	}
	if mode&syscall.S_ISVTX != 0 {
		goMode |= os.ModeSticky
	}
	return goMode
}

func readFile(payload []byte, _ <-chan struct{}) (answer, error) {
	var req fileReadRequest
	if err := decodeRequest(payload, &req); err != nil {
		return answer{}, err
	}
	if err := checkPlace(req.Path, req.Offset); err != nil {
		return answer{}, err
	}
	if req.Length < 0 || req.Length > MaxChunk {
		return answer{}, invalid("length %d is out of range (at most %d)", req.Length, MaxChunk)
	}
	file, err := os.OpenFile(req.Path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return answer{}, err
	}
	if err := requireRegular(file); err != nil {
		return answer{}, err
	}
	defer file.Close()
	info, err := file.Stat()
	if err != nil {
		return answer{}, err
	}
	buffer := make([]byte, req.Length)
	n, err := file.ReadAt(buffer, req.Offset)
	if err != nil && err != io.EOF {
		return answer{}, err
	}
	end := req.Offset + int64(n)
	size := info.Size()
	// Pseudo-files (procfs, sysfs) say size 0 and have bytes anyway: for them the end is where a
	// read comes up short.
	eof := err == io.EOF || (end >= size && (size > 0 || n == 0))
	if n > 0 && end > size {
		size = end
	}
	return mixedAnswer(TypeFileData, map[string]interface{}{"size": clampSafe(size), "eof": eof}, buffer[:n])
}

func statFile(payload []byte, _ <-chan struct{}) (answer, error) {
	var req statRequest
	if err := decodeRequest(payload, &req); err != nil {
		return answer{}, err
	}
	if err := checkPath(req.Path); err != nil {
		return answer{}, err
	}
	info, err := os.Lstat(req.Path)
	if err != nil {
		return answer{}, err
	}
	return jsonAnswer(TypeStatResult, describe(filepath.Base(req.Path), info))
}

func listDir(payload []byte, _ <-chan struct{}) (answer, error) {
	var req listRequest
	if err := decodeRequest(payload, &req); err != nil {
		return answer{}, err
	}
	if err := checkPlace(req.Path, req.Offset); err != nil {
		return answer{}, err
	}
	// O_DIRECTORY: anything else is ENOTDIR (INVALID_ARGUMENT), and a FIFO cannot block the open.
	dir, err := os.OpenFile(req.Path, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return answer{}, err
	}
	names, err := dir.Readdirnames(maxDirNames + 1)
	dir.Close()
	if err != nil && err != io.EOF {
		return answer{}, err
	}
	if len(names) > maxDirNames {
		return answer{}, exhausted("%s has more than %d entries", req.Path, maxDirNames)
	}
	sort.Strings(names)
	entries := []fileStat{}
	size := len(`{"entries":[],"truncated":false}`)
	truncated := false
	for index := req.Offset; index < int64(len(names)); index++ {
		name := names[index]
		entry := fileStat{Name: name, Type: "other"}
		// An entry removed since the directory was read keeps its place (as "other", size 0), so
		// that the indexes of the next page still hold.
		if info, err := os.Lstat(filepath.Join(req.Path, name)); err == nil {
			entry = describe(name, info)
		}
		encoded, err := json.Marshal(entry)
		if err != nil {
			return answer{}, err
		}
		if len(entries) == maxListEntries || size+len(encoded)+1 > maxListBytes {
			truncated = true
			break
		}
		entries = append(entries, entry)
		size += len(encoded) + 1
	}
	return jsonAnswer(TypeListResult, map[string]interface{}{"entries": entries, "truncated": truncated})
}

func describe(name string, info os.FileInfo) fileStat {
	mode := uint32(info.Mode().Perm())
	if sys, ok := info.Sys().(*syscall.Stat_t); ok {
		mode = sys.Mode & 0o7777
	}
	return fileStat{
		Name:    name,
		Type:    fileType(info),
		Size:    clampSafe(info.Size()),
		Mode:    mode,
		MtimeMs: clampSafeSigned(info.ModTime().UnixMilli()),
	}
}

func fileType(info os.FileInfo) string {
	switch mode := info.Mode(); {
	case mode.IsRegular():
		return "file"
	case mode.IsDir():
		return "dir"
	case mode&os.ModeSymlink != 0:
		return "symlink"
	}
	return "other"
}

// clampSafe bounds a count to what the host reads exactly (a sparse file may claim more).
func clampSafe(value int64) int64 {
	if value < 0 {
		return 0
	}
	if value > maxSafe {
		return maxSafe
	}
	return value
}

// clampSafeSigned does the same for a time, which may be before 1970.
func clampSafeSigned(value int64) int64 {
	if value < -maxSafe {
		return -maxSafe
	}
	if value > maxSafe {
		return maxSafe
	}
	return value
}
