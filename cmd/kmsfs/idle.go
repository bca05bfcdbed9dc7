package main

import (
	"log/slog"
	"time"

	kfs "github.com/kmsfs/kmsfs/fs"
)

// watchIdle unmounts the mount once it has served no request and held no
// open file or directory for idle (kmsfs mount --idle, as gocryptfs
// -idle). It reads the mount's counters (fs.Activity) every tenth of
// idle, between 100 ms and a minute. An unmount that fails because the
// mountpoint is busy (a shell's working directory in it) is tried again
// after another idle period. It returns when done is closed or the
// unmount succeeds; unmount returns once the mount is gone.
func watchIdle(root *kfs.Root, idle time.Duration, unmount func() error, log *slog.Logger, done <-chan struct{}) {
	tick := time.NewTicker(min(max(idle/10, 100*time.Millisecond), time.Minute))
	defer tick.Stop()
	last := root.Activity()
	quietSince, saidBusy := time.Now(), false
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		a := root.Activity()
		if a.Requests != last.Requests || a.InFlight > 0 {
			last, quietSince, saidBusy = a, time.Now(), false
			continue
		}
		if time.Since(quietSince) < idle {
			continue
		}
		if a.OpenFiles > 0 || a.OpenDirs > 0 {
			if !saidBusy {
				log.Debug("no request for the idle time, but files are open: staying mounted", "idle", idle.String(), "open_files", a.OpenFiles, "open_dirs", a.OpenDirs)
				saidBusy = true
			}
			continue
		}
		log.Info("idle: no request and no open file; unmounting", "idle", idle.String())
		if err := unmount(); err != nil {
			log.Info("idle, but the mountpoint is busy (a working directory in it?): trying again after another idle period", "err", err.Error())
			last, quietSince = root.Activity(), time.Now()
			continue
		}
		return
	}
}
