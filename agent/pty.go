// Pseudo-terminals for processes started with a tty, from the kernel's interface directly
// (/dev/ptmx and its ioctls): the standard library has no pty package.
package main

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// winsize is the kernel's struct winsize.
type winsize struct {
	rows, cols, xPixels, yPixels uint16
}

func ioctl(fd, request uintptr, arg unsafe.Pointer) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, request, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

// openPty opens a new terminal of the given size. The master is non-blocking, so the runtime's
// poller serves it: a blocked read or write ends when it is closed or its deadline passes. The
// slave is blocking, as a process expects its terminal to be.
func openPty(rows, cols uint16) (master, slave *os.File, err error) {
	masterFd, err := syscall.Open("/dev/ptmx", syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	unlock := int32(0)
	var number uint32
	size := winsize{rows: rows, cols: cols}
	if err = ioctl(uintptr(masterFd), syscall.TIOCSPTLCK, unsafe.Pointer(&unlock)); err == nil {
		if err = ioctl(uintptr(masterFd), syscall.TIOCGPTN, unsafe.Pointer(&number)); err == nil {
			err = ioctl(uintptr(masterFd), syscall.TIOCSWINSZ, unsafe.Pointer(&size))
		}
	}
	if err != nil {
		syscall.Close(masterFd)
		return nil, nil, fmt.Errorf("setting up a pty: %w", err)
	}
	slavePath := fmt.Sprintf("/dev/pts/%d", number)
	slaveFd, err := syscall.Open(slavePath, syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		syscall.Close(masterFd)
		return nil, nil, fmt.Errorf("open %s: %w", slavePath, err)
	}
	return os.NewFile(uintptr(masterFd), "/dev/ptmx"), os.NewFile(uintptr(slaveFd), slavePath), nil
}

// resizePty sets the terminal's size; the kernel tells its foreground process group (SIGWINCH).
func resizePty(master *os.File, rows, cols uint16) error {
	conn, err := master.SyscallConn()
	if err != nil {
		return err
	}
	size := winsize{rows: rows, cols: cols}
	// Control, not Fd: Fd would turn the master blocking and take it from the poller.
	controlErr := conn.Control(func(fd uintptr) {
		err = ioctl(fd, syscall.TIOCSWINSZ, unsafe.Pointer(&size))
	})
	if controlErr != nil {
		return controlErr
	}
	return err
}
