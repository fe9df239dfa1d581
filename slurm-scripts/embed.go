// Package slurmscripts holds the files jobs use beside the sbatch scripts. The presets are
// embedded, so the agent has them wherever it is installed.
package slurmscripts

import _ "embed"

// PresetsYAML is presets.yaml as shipped.
//
//go:embed presets.yaml
var PresetsYAML []byte
