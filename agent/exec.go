// Running one command for the host: argv, env, cwd, stdin, a deadline; bounded output.
package main

import (
	"bytes"
	"errors"
	"os/exec"
	"syscall"
	"time"
)

// MaxOutput bounds each of stdout and stderr in an answer: both, base64'd in JSON, fit in one frame.
const MaxOutput = 64 * 1024

type ExecRequest struct {
	Argv      []string `json:"argv"`
	Env       []string `json:"env"`
	Cwd       string   `json:"cwd"`
	Stdin     []byte   `json:"stdin"`
	TimeoutMs int64    `json:"timeoutMs"`
}

type ExecResult struct {
	ExitCode        int    `json:"exitCode"`
	Signal          int    `json:"signal"`
	TimedOut        bool   `json:"timedOut"`
	Stdout          []byte `json:"stdout"`
	Stderr          []byte `json:"stderr"`
	StdoutTruncated bool   `json:"stdoutTruncated"`
	StderrTruncated bool   `json:"stderrTruncated"`
	DurationMs      int64  `json:"durationMs"`
}

// boundedBuffer keeps the first max bytes and counts what it dropped.
type boundedBuffer struct {
	buf       bytes.Buffer
	max       int
	truncated bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	room := b.max - b.buf.Len()
	if room < len(p) {
		b.truncated = true
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return b.buf.Write(p)
}

// runExec runs the request; cancel (closed by the host's CANCEL) kills it like the deadline does.
func runExec(req ExecRequest, cancel <-chan struct{}) (ExecResult, error) {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return ExecResult{}, errors.New("argv is empty")
	}
	cmd := exec.Command(req.Argv[0], req.Argv[1:]...)
	cmd.Env = req.Env
	if len(cmd.Env) == 0 {
		cmd.Env = []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root"}
	}
	cmd.Dir = req.Cwd
	cmd.Stdin = bytes.NewReader(req.Stdin)
	stdout := &boundedBuffer{max: MaxOutput}
	stderr := &boundedBuffer{max: MaxOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Its own process group: a timeout kills whatever it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return ExecResult{}, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var deadline <-chan time.Time
	if req.TimeoutMs > 0 {
		timer := time.NewTimer(time.Duration(req.TimeoutMs) * time.Millisecond)
		defer timer.Stop()
		deadline = timer.C
	}
	result := ExecResult{}
	var waitErr error
	select {
	case waitErr = <-done:
	case <-deadline:
		result.TimedOut = true
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		waitErr = <-done
	case <-cancel:
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		waitErr = <-done
	}
	result.DurationMs = time.Since(started).Milliseconds()
	if waitErr != nil {
		var exitErr *exec.ExitError
		if !errors.As(waitErr, &exitErr) {
			return ExecResult{}, waitErr
		}
	}
	status := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if status.Signaled() {
		result.Signal = int(status.Signal())
		result.ExitCode = -1
	} else {
		result.ExitCode = status.ExitStatus()
	}
	result.Stdout, result.StdoutTruncated = stdout.buf.Bytes(), stdout.truncated
	result.Stderr, result.StderrTruncated = stderr.buf.Bytes(), stderr.truncated
	return result, nil
}
