// Hostlist expressions such as "gpu[001-003,010],login[1-2]".
//
// The expansion matches `scontrol show hostnames` for every expression Slurm accepts and treats
// as valid: comma (or whitespace) separated names, numeric ranges whose zero padding is taken from
// the low bound, and several bracket groups in one name, expanded as a cartesian product with the
// rightmost group varying fastest. Where scontrol silently accepts malformed text (an unclosed
// bracket, a range with no high bound), ExpandHostlist returns an error naming the offending text instead.
package slurm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MaxHostlistHosts bounds the size of one expansion so that a typo cannot exhaust memory.
const MaxHostlistHosts = 1 << 22

// ErrHostlist is wrapped by every parse error.
var ErrHostlist = errors.New("invalid hostlist")

// rangeSpec is one "lo-hi" (or single "n") inside brackets.
type rangeSpec struct {
	lo, hi uint64
	width  int
}

// group is the set of numbers one bracket expression stands for.
type group []rangeSpec

func (g group) count() uint64 {
	var n uint64
	for _, r := range g {
		n += r.hi - r.lo + 1
	}
	return n
}

// pattern is a host name split into literals and bracket groups:
// lits[0] g[0] lits[1] g[1] ... lits[len(g)].
type pattern struct {
	lits   []string
	groups []group
}

func (p pattern) count() uint64 {
	n := uint64(1)
	for _, g := range p.groups {
		n *= g.count()
		if n > MaxHostlistHosts {
			return n
		}
	}
	return n
}

// ExpandHostlist returns every host named by expr, in scontrol's order, duplicates kept.
func ExpandHostlist(expr string) ([]string, error) {
	elems, err := splitTop(expr)
	if err != nil {
		return nil, err
	}
	pats := make([]pattern, 0, len(elems))
	var total uint64
	for _, e := range elems {
		p, err := parsePattern(e)
		if err != nil {
			return nil, err
		}
		total += p.count()
		if total > MaxHostlistHosts {
			return nil, fmt.Errorf("%w: %q expands to more than %d hosts", ErrHostlist, expr, MaxHostlistHosts)
		}
		pats = append(pats, p)
	}
	hosts := make([]string, 0, total)
	for _, p := range pats {
		hosts = p.expand(hosts)
	}
	return hosts, nil
}

// splitTop splits expr on commas and whitespace outside brackets, dropping empty elements.
func splitTop(expr string) ([]string, error) {
	var elems []string
	depth, start := 0, 0
	for i := 0; i < len(expr); i++ {
		switch c := expr[i]; c {
		case '[':
			if depth > 0 {
				return nil, fmt.Errorf("%w: nested '[' in %q", ErrHostlist, expr)
			}
			depth++
		case ']':
			if depth == 0 {
				return nil, fmt.Errorf("%w: ']' without '[' in %q", ErrHostlist, expr)
			}
			depth--
		case ',', ' ', '\t', '\n':
			if depth == 0 {
				if i > start {
					elems = append(elems, expr[start:i])
				}
				start = i + 1
			} else if c != ',' {
				return nil, fmt.Errorf("%w: whitespace inside brackets in %q", ErrHostlist, expr)
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("%w: unclosed '[' in %q", ErrHostlist, expr)
	}
	if start < len(expr) {
		elems = append(elems, expr[start:])
	}
	return elems, nil
}

// parsePattern parses one bracket-balanced host element.
func parsePattern(elem string) (pattern, error) {
	var p pattern
	rest := elem
	for {
		open := strings.IndexByte(rest, '[')
		if open < 0 {
			p.lits = append(p.lits, rest)
			return p, nil
		}
		end := strings.IndexByte(rest, ']') // splitTop guarantees it exists after open
		g, err := parseGroup(rest[open+1 : end])
		if err != nil {
			return pattern{}, fmt.Errorf("%w in %q", err, elem)
		}
		p.lits = append(p.lits, rest[:open])
		p.groups = append(p.groups, g)
		rest = rest[end+1:]
	}
}

// parseGroup parses the inside of one bracket pair, "001-003,010".
func parseGroup(s string) (group, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: empty brackets", ErrHostlist)
	}
	var g group
	for _, part := range strings.Split(s, ",") {
		r, err := parseRange(part)
		if err != nil {
			return nil, err
		}
		g = append(g, r)
	}
	return g, nil
}

func parseRange(s string) (rangeSpec, error) {
	loStr, hiStr, isRange := strings.Cut(s, "-")
	if !isDigits(loStr) || (isRange && !isDigits(hiStr)) {
		return rangeSpec{}, fmt.Errorf("%w: range %q is not numeric", ErrHostlist, s)
	}
	lo, err := strconv.ParseUint(loStr, 10, 63)
	if err != nil {
		return rangeSpec{}, fmt.Errorf("%w: range %q: %v", ErrHostlist, s, err)
	}
	hi := lo
	if isRange {
		if hi, err = strconv.ParseUint(hiStr, 10, 63); err != nil {
			return rangeSpec{}, fmt.Errorf("%w: range %q: %v", ErrHostlist, s, err)
		}
	}
	if lo > hi {
		return rangeSpec{}, fmt.Errorf("%w: range %q runs backwards", ErrHostlist, s)
	}
	if hi-lo >= MaxHostlistHosts {
		return rangeSpec{}, fmt.Errorf("%w: range %q has more than %d hosts", ErrHostlist, s, MaxHostlistHosts)
	}
	return rangeSpec{lo: lo, hi: hi, width: len(loStr)}, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// expand appends the pattern's hosts to dst, rightmost group varying fastest.
func (p pattern) expand(dst []string) []string {
	if len(p.groups) == 0 {
		return append(dst, p.lits[0])
	}
	buf := make([]byte, 0, 64)
	var walk func(level int, buf []byte)
	walk = func(level int, buf []byte) {
		buf = append(buf, p.lits[level]...)
		if level == len(p.groups) {
			dst = append(dst, string(buf))
			return
		}
		for _, r := range p.groups[level] {
			for n := r.lo; n <= r.hi; n++ {
				walk(level+1, appendPadded(buf, n, r.width))
			}
		}
	}
	walk(0, buf)
	return dst
}

// appendPadded appends n in decimal, left-padded with zeros to width digits.
func appendPadded(buf []byte, n uint64, width int) []byte {
	var tmp [20]byte
	digits := strconv.AppendUint(tmp[:0], n, 10)
	for i := len(digits); i < width; i++ {
		buf = append(buf, '0')
	}
	return append(buf, digits...)
}
