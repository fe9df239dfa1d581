//go:build !linux

package tunnel

import "syscall"

// childAttr: macOS has no parent-death signal; ssh ends with the tunnel's context, and on its
// own when its output pipe closes.
func childAttr() *syscall.SysProcAttr { return nil }
