// In-guest fault on a filesystem: a file written until ENOSPC, removed on clear.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

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
