package slurm

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestServiceUnits(t *testing.T) {
	assert.InDelta(t, 1737.6, ServiceUnits(4*time.Hour, 4, 108.6), 1e-9)
	assert.Zero(t, ServiceUnits(time.Hour, 0, 108.6))
}
