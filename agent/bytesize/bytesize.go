// Package bytesize reads sizes as people write them: "80GB", "80 GiB", "32MiB". It knows nothing
// of what is measured.
package bytesize

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrSize is wrapped by every error about a size that is not one.
var ErrSize = errors.New("invalid size")

// Parse reads a size: "80GB", "80 GiB", "81559MiB", "85520809984" (bytes) or "80"
// (gigabytes, when under a million).
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	units := []struct {
		suffix string
		mult   float64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"G", 1e9}, {"B", 1}}
	mult := 0.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%w: %q is not like 80GB, 80GiB or 81559MiB", ErrSize, s)
	}
	if mult == 0 {
		mult = 1e9
		if v >= 1e6 {
			mult = 1
		}
	}
	return int64(v * mult), nil
}
