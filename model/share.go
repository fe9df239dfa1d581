package model

import (
	"fmt"
	"strings"
)

// Combine joins the reports of the shares of dir's files, each verified by one node, into the
// report of the whole: every expected file must be in exactly one share. The error is
// ErrMismatch's when a file differs, another when the shares do not cover the files once.
func Combine(dir string, shares []Report) (Report, error) {
	source, files, err := Expected(dir)
	if err != nil {
		return Report{}, err
	}
	byName := map[string]Result{}
	var twice []string
	rep := Report{Dir: dir, Source: source}
	for _, s := range shares {
		rep.Hashed += s.Hashed
		rep.Skipped += s.Skipped
		for _, r := range s.Files {
			if _, seen := byName[r.Name]; seen {
				twice = append(twice, r.Name)
			}
			byName[r.Name] = r
		}
	}
	var missing []string
	for _, f := range files {
		r, ok := byName[f.Name]
		if !ok {
			missing = append(missing, f.Name)
			continue
		}
		if r.Algo != f.Algo || r.Want != f.Want {
			// A share read an older list than this one: the model changed while it verified.
			r.OK, r.Err = false, "the model changed while it was verified"
		}
		rep.Files = append(rep.Files, r)
	}
	switch {
	case len(missing) > 0:
		return rep, fmt.Errorf("no node verified %d of %d files of %s, first %s", len(missing), len(files), dir, missing[0])
	case len(twice) > 0:
		return rep, fmt.Errorf("%s was verified by more than one node: %s", dir, strings.Join(twice, ", "))
	}
	return rep, rep.Err()
}

// SaveRecord adds the report's verified files to the record at path, as they looked when
// they were read, so that the next verification of the unchanged files reads none of them.
func SaveRecord(path string, rep Report) error {
	rec := loadRecord(path)
	for _, r := range rep.Files {
		if r.OK {
			rec.add(r.File, r.Stat)
		}
	}
	return rec.save(path)
}
