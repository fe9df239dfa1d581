package clock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestFake(t *testing.T) {
	f := NewFake()
	start := f.Now()
	a, b := f.After(time.Second), f.After(3*time.Second)
	<-f.Timers()
	<-f.Timers()
	f.Advance(999 * time.Millisecond)
	select {
	case <-a:
		t.Fatal("fired early")
	default:
	}
	f.Advance(time.Millisecond)
	assert.Equal(t, start.Add(time.Second), <-a)
	f.Advance(5 * time.Second)
	assert.Equal(t, start.Add(6*time.Second), <-b, "a late timer gets the time it was fired at")
	assert.Equal(t, start.Add(6*time.Second), <-f.After(0), "no wait for nothing")
}

func TestReal(t *testing.T) {
	var c Clock = Real{}
	before := c.Now()
	<-c.After(time.Millisecond)
	assert.True(t, c.Now().After(before))
}

func TestAdvanceOnWait(t *testing.T) {
	f := NewFake()
	stop := f.AdvanceOnWait(time.Minute)
	start := f.Now()
	for i := 0; i < 3; i++ {
		<-f.After(time.Minute)
	}
	stop()
	assert.Equal(t, 3*time.Minute, f.Now().Sub(start))
}
