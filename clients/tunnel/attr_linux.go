package tunnel

import "syscall"

// childAttr makes ssh die with the tunnel, even when the tunnel is killed.
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} }
