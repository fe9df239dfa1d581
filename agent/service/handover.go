package service

import (
	"context"
	"time"

	"github.com/llm-agent/llm-agent/jobfiles"
)

// handOver turns the clients over to the successor, which serves now: for s.timings.Follow the
// job still serves, closing each connection after its answer, so that clients that follow the
// service's file move over; then it answers 503 with the successor's address, for up to
// s.timings.Linger, before it drains and ends. Both give way to the job's time limit, the 503s
// getting at least half of what is left.
func (s *Service) handOver(ctx context.Context, to jobfiles.Connection) string {
	s.log.Info("the successor serves: handing over", "successor", to.JobID, "url", to.BaseURL)
	if s.front != nil {
		s.front.CloseConnections()
	}
	wait := func(d time.Duration) bool {
		if at := s.stopAt(); !at.IsZero() {
			d = min(d, at.Sub(s.clock.Now()))
		}
		if d <= 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-s.clock.After(d):
			return true
		}
	}
	// A successor ready late leaves little time before the job must end: half of it still
	// goes to the 503s, so that a client that does not follow learns where the service went.
	follow := s.timings.Follow
	if at := s.stopAt(); !at.IsZero() {
		follow = min(follow, at.Sub(s.clock.Now())/2)
	}
	if !wait(follow) {
		return ""
	}
	if s.front != nil {
		s.front.HandOver(to.BaseURL)
		if !wait(s.timings.Linger) {
			return ""
		}
	}
	return "handed over to job " + to.JobID
}
