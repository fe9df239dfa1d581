package bytesize

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]int64{"80GB": 80e9, "80 gb": 80e9, "80GiB": 80 << 30, "81559MiB": 81559 << 20, "80": 80e9, "85520809984": 85520809984, "1TB": 1e12} {
		got, err := Parse(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "lots", "-5GB"} {
		_, err := Parse(bad)
		assert.ErrorIs(t, err, ErrSize, bad)
	}
}
