package agent

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The architecture's rules, checked over the whole repository (issue 30): rooms of bounded
// size, every package documented, and imports that flow one way down the agent's rooms.

const (
	module       = "github.com/llm-agent/llm-agent"
	maxFileLines = 350
	maxFuncLines = 60
)

// layers are the agent's rooms from the bottom up: a room may import rooms of lower layers
// only, never one of its own layer or above. The facade, agent, is on top.
var layers = [][]string{
	{"agent/bytesize", "agent/internal/linelog", "agent/lifecycle", "agent/securefs", "agent/plan", "agent/scale"},
	{"agent/config", "agent/metrics", "agent/gateway", "agent/raycluster"},
	{"agent/layout", "agent/secrets", "agent/lora", "agent/service", "agent/status"},
	{"agent/node", "agent/webui"},
	{"agent/engine", "agent/modelprep", "agent/front"},
	{"agent/replica", "agent/ranks"},
	{"agent/head", "agent/worker"},
	{"agent"},
}

// goPackage is one directory's non-test Go files, parsed.
type goPackage struct {
	dir   string // relative to the repository root, with slashes
	files map[string]*ast.File
	fset  *token.FileSet
}

// repoPackages parses every package of the repository outside hidden and environment folders.
func repoPackages(t *testing.T) []goPackage {
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	byDir := map[string]*goPackage{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		p := byDir[rel]
		if p == nil {
			p = &goPackage{dir: rel, files: map[string]*ast.File{}, fset: token.NewFileSet()}
			byDir[rel] = p
		}
		f, err := parser.ParseFile(p.fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		p.files[path] = f
		return nil
	})
	require.NoError(t, err)
	var out []goPackage
	for _, p := range byDir {
		out = append(out, *p)
	}
	require.NotEmpty(t, out)
	return out
}

// TestRoomSizes: no non-test Go file over maxFileLines lines, and outside e2e/ (the test
// harness) no function over maxFuncLines.
func TestRoomSizes(t *testing.T) {
	for _, p := range repoPackages(t) {
		for path, f := range p.files {
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.LessOrEqual(t, strings.Count(string(b), "\n"), maxFileLines, "%s is over %d lines", path, maxFileLines)
			if p.dir == "e2e" || strings.HasPrefix(p.dir, "e2e/") {
				continue
			}
			for _, d := range f.Decls {
				if fn, ok := d.(*ast.FuncDecl); ok && fn.Body != nil {
					lines := p.fset.Position(fn.End()).Line - p.fset.Position(fn.Pos()).Line + 1
					assert.LessOrEqual(t, lines, maxFuncLines, "%s: %s is %d lines", path, fn.Name.Name, lines)
				}
			}
		}
	}
}

// TestPackagesDocumented: every package says what it is in a package comment.
func TestPackagesDocumented(t *testing.T) {
	for _, p := range repoPackages(t) {
		documented := false
		for _, f := range p.files {
			documented = documented || (f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "")
		}
		assert.True(t, documented, "package %s has no package comment", p.dir)
	}
}

// TestImportsFlowDown: a room of agent/ imports only rooms below it, and nothing outside
// agent/ but the command and the end-to-end tests reaches into it, except for its secure file
// helpers.
func TestImportsFlowDown(t *testing.T) {
	layer := map[string]int{}
	for i, rooms := range layers {
		for _, r := range rooms {
			layer[r] = i
		}
	}
	for _, p := range repoPackages(t) {
		inAgent := p.dir == "agent" || strings.HasPrefix(p.dir, "agent/")
		own, placed := layer[p.dir]
		if inAgent {
			assert.True(t, placed, "package %s is not in the architecture's layers: place it", p.dir)
		}
		for path, f := range p.files {
			for _, imp := range f.Imports {
				target, _ := strconv.Unquote(imp.Path.Value)
				rel, ok := strings.CutPrefix(target, module+"/")
				if !ok || !(rel == "agent" || strings.HasPrefix(rel, "agent/")) {
					continue
				}
				switch {
				case inAgent:
					assert.Less(t, layer[rel], own, "%s imports %s, which is not below it", path, rel)
				case p.dir == "cmd/llm-agent" || p.dir == "e2e" || strings.HasPrefix(p.dir, "e2e/"):
				default:
					assert.True(t, slices.Contains([]string{"agent/securefs"}, rel), "%s reaches into %s", path, rel)
				}
			}
		}
	}
}
