package model

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func sha256hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func gitSHA1(b []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(b))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// hfCache builds models--org--tiny in a Hugging Face cache as huggingface_hub lays it out:
// blobs named by their content's address (SHA-256 for the large weights, the git blob hash for
// the small files), and a snapshot of relative links to them. It returns the snapshot.
func hfCache(t *testing.T, files map[string][]byte, large map[string]bool) string {
	t.Helper()
	repo := filepath.Join(t.TempDir(), "hub", "models--org--tiny")
	snap := filepath.Join(repo, "snapshots", "0123456789abcdef0123456789abcdef01234567")
	require.NoError(t, os.MkdirAll(filepath.Join(repo, "blobs"), 0o755))
	for name, content := range files {
		blob := gitSHA1(content)
		if large[name] {
			blob = sha256hex(content)
		}
		require.NoError(t, os.WriteFile(filepath.Join(repo, "blobs", blob), content, 0o644))
		link := filepath.Join(snap, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(link), 0o755))
		rel, err := filepath.Rel(filepath.Dir(link), filepath.Join(repo, "blobs", blob))
		require.NoError(t, err)
		require.NoError(t, os.Symlink(rel, link))
	}
	return snap
}

func tinyModel() (map[string][]byte, map[string]bool) {
	weights := make([]byte, 3<<20)
	for i := range weights {
		weights[i] = byte(i * 7)
	}
	return map[string][]byte{
		"config.json":                      []byte(`{"model_type":"llama"}`),
		"tokenizer/tokenizer.json":         []byte(`{"version":"1.0"}`),
		"model-00001-of-00001.safetensors": weights,
	}, map[string]bool{"model-00001-of-00001.safetensors": true}
}

func TestGitBlobHash(t *testing.T) {
	// The value huggingface_hub's own git_hash documents.
	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(path, []byte("Hello, World!"), 0o644))
	got, err := HashFile(context.Background(), path, AlgoGitSHA1)
	require.NoError(t, err)
	assert.Equal(t, "b45ef6fec89518d314f546fd6c3025367b721684", got)
	_, err = HashFile(context.Background(), path, "md5")
	assert.ErrorContains(t, err, "unknown digest")
}

func TestVerifyHFCache(t *testing.T) {
	files, large := tinyModel()
	snap := hfCache(t, files, large)
	rep, err := Verify(context.Background(), snap, Options{Workers: 2})
	require.NoError(t, err)
	assert.Equal(t, SourceHFCache, rep.Source)
	require.Len(t, rep.Files, 3)
	algos := map[string]string{}
	for _, f := range rep.Files {
		assert.True(t, f.OK, f.Name)
		algos[f.Name] = f.Algo
	}
	assert.Equal(t, map[string]string{"config.json": AlgoGitSHA1, "tokenizer/tokenizer.json": AlgoGitSHA1,
		"model-00001-of-00001.safetensors": AlgoSHA256}, algos)

	// One byte of the weights changed in the blob: the file is named.
	weights := filepath.Join(snap, "model-00001-of-00001.safetensors")
	b, _ := os.ReadFile(weights)
	b[1000] ^= 1
	target, _ := filepath.EvalSymlinks(weights)
	require.NoError(t, os.WriteFile(target, b, 0o644))
	rep, err = Verify(context.Background(), snap, Options{})
	assert.ErrorIs(t, err, ErrMismatch)
	assert.ErrorContains(t, err, "model-00001-of-00001.safetensors (sha256 "+sha256hex(b)[:12]+"…, expected "+sha256hex(files["model-00001-of-00001.safetensors"])[:12]+"…; 1 of 3 files differ)")
	require.Len(t, rep.Failed(), 1)
	assert.Equal(t, sha256hex(b), rep.Failed()[0].Got)

	// A small file's blob changed too.
	cfg, _ := filepath.EvalSymlinks(filepath.Join(snap, "config.json"))
	require.NoError(t, os.WriteFile(cfg, []byte(`{"model_type":"evil"}`), 0o644))
	rep, _ = Verify(context.Background(), snap, Options{})
	assert.Len(t, rep.Failed(), 2)
}

func TestHFCacheRefusals(t *testing.T) {
	files, large := tinyModel()
	for _, tt := range []struct {
		name string
		bend func(snap string)
		want string
	}{
		{"a plain file in the snapshot", func(snap string) {
			require.NoError(t, os.WriteFile(filepath.Join(snap, "extra.bin"), []byte("x"), 0o644))
		}, "extra.bin is not a link into the cache's blobs"},
		{"a link out of the blobs", func(snap string) {
			require.NoError(t, os.Symlink("/etc/hostname", filepath.Join(snap, "other")))
		}, "other links outside the cache's blobs"},
		{"a blob that is not an address", func(snap string) {
			blobs := filepath.Join(filepath.Dir(filepath.Dir(snap)), "blobs")
			require.NoError(t, os.WriteFile(filepath.Join(blobs, "notahash"), []byte("x"), 0o644))
			require.NoError(t, os.Symlink("../../blobs/notahash", filepath.Join(snap, "odd")))
		}, `blob "notahash" is not a content address`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			snap := hfCache(t, files, large)
			tt.bend(snap)
			_, err := Verify(context.Background(), snap, Options{})
			assert.ErrorIs(t, err, ErrMismatch)
			assert.ErrorContains(t, err, tt.want)
		})
	}
	// A link whose blob is missing: that file fails, by name.
	snap := hfCache(t, files, large)
	target, _ := filepath.EvalSymlinks(filepath.Join(snap, "config.json"))
	require.NoError(t, os.Remove(target))
	rep, err := Verify(context.Background(), snap, Options{})
	assert.ErrorIs(t, err, ErrMismatch)
	require.Len(t, rep.Failed(), 1)
	assert.Equal(t, "config.json", rep.Failed()[0].Name)
	assert.Contains(t, rep.Failed()[0].Err, "no such file")
}

func TestManifestAgreesWithSha256sum(t *testing.T) {
	dir := t.TempDir()
	files, _ := tinyModel()
	for name, b := range files {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, `odd\name`), []byte("odd"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, ".cache", "huggingface"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".cache", "huggingface", "meta"), []byte("left out"), 0o644))
	entries, err := WriteManifest(context.Background(), dir, 0)
	require.NoError(t, err)
	assert.Len(t, entries, 4, "the hidden download cache is left out")
	cmd := exec.Command("sha256sum", "--strict", "-c", ManifestName)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "sha256sum -c: %s", out)
	assert.Equal(t, 4, strings.Count(string(out), ": OK"))

	rep, err := Verify(context.Background(), dir, Options{})
	require.NoError(t, err)
	assert.Equal(t, SourceManifest, rep.Source)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"model_type":"evil"}`), 0o644))
	_, err = Verify(context.Background(), dir, Options{})
	assert.ErrorIs(t, err, ErrMismatch)
	assert.ErrorContains(t, err, "config.json")
	// sha256sum agrees that it fails.
	cmd = exec.Command("sha256sum", "-c", ManifestName)
	cmd.Dir = dir
	out, err = cmd.CombinedOutput()
	assert.Error(t, err)
	assert.Contains(t, string(out), "config.json: FAILED")
}

func TestParseManifest(t *testing.T) {
	d := strings.Repeat("ab", 32)
	entries, err := ParseManifest([]byte(d + "  a.txt\n" + strings.ToUpper(d) + " *b/c.bin\n\\" + d + `  x\\y\nz` + "\n"))
	require.NoError(t, err)
	assert.Equal(t, []Entry{{d, "a.txt"}, {d, "b/c.bin"}, {d, "x\\y\nz"}}, entries)
	assert.Equal(t, d+"  a.txt\n"+d+"  b/c.bin\n\\"+d+`  x\\y\nz`+"\n", string(FormatManifest(entries)))
	for _, tt := range []struct{ in, want string }{
		{"", "no file listed"},
		{"abc  a.txt\n", "line 1: expected DIGEST"},
		{d + " a.txt\n", "line 1: expected DIGEST"},
		{d + "  ../etc/passwd\n", "outside the directory"},
		{d + "  /etc/passwd\n", "outside the directory"},
		{d + "  a\n" + d + "  ./a\n", "listed twice"},
	} {
		_, err := ParseManifest([]byte(tt.in))
		assert.ErrorIs(t, err, ErrManifest, tt.in)
		assert.ErrorContains(t, err, tt.want, tt.in)
	}
}

func TestNoSource(t *testing.T) {
	dir := t.TempDir()
	_, err := Verify(context.Background(), dir, Options{})
	assert.ErrorIs(t, err, ErrNoSource)
	assert.ErrorContains(t, err, "llm-agent model manifest writes one")
	_, err = WriteManifest(context.Background(), dir, 1)
	assert.ErrorIs(t, err, ErrNoSource)
	require.NoError(t, os.WriteFile(filepath.Join(dir, ManifestName), []byte("junk\n"), 0o644))
	_, err = Verify(context.Background(), dir, Options{})
	assert.ErrorIs(t, err, ErrManifest)
}

// TestRecordSkipsUnchangedFiles: a model of 100 files verified once is verified again, unchanged,
// without reading a file, in under a second; a file rewritten and touched back to its old times
// is read again.
func TestRecordSkipsUnchangedFiles(t *testing.T) {
	dir := t.TempDir()
	for i := range 100 {
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("shard-%03d.bin", i)), []byte(strings.Repeat(fmt.Sprint(i), 4096)), 0o644))
	}
	_, err := WriteManifest(context.Background(), dir, 0)
	require.NoError(t, err)
	home := t.TempDir()
	o := Options{Record: RecordPath(home, dir)}
	rep, err := Verify(context.Background(), dir, o)
	require.NoError(t, err)
	assert.Equal(t, 0, rep.Skipped)
	assert.Positive(t, rep.Hashed)
	fi, err := os.Stat(o.Record)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	di, err := os.Stat(filepath.Dir(o.Record))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), di.Mode().Perm())

	start := time.Now()
	rep, err = Verify(context.Background(), dir, o)
	took := time.Since(start)
	require.NoError(t, err)
	assert.Equal(t, 100, rep.Skipped)
	assert.Zero(t, rep.Hashed)
	assert.Less(t, took, time.Second)
	t.Logf("re-verification of 100 unchanged files: %s", took)

	// Rewritten with the same size, and its modification time set back.
	path := filepath.Join(dir, "shard-042.bin")
	old, _ := os.Stat(path)
	require.NoError(t, os.WriteFile(path, []byte(strings.Repeat("x", int(old.Size()))), 0o644))
	require.NoError(t, os.Chtimes(path, old.ModTime(), old.ModTime()))
	rep, err = Verify(context.Background(), dir, o)
	assert.ErrorIs(t, err, ErrMismatch)
	assert.ErrorContains(t, err, "shard-042.bin")
	assert.Equal(t, 99, rep.Skipped)
}

func TestRecordInAnOpenDirectoryIsRefused(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a"), []byte("a"), 0o644))
	_, err := WriteManifest(context.Background(), dir, 1)
	require.NoError(t, err)
	open := filepath.Join(t.TempDir(), "verified")
	require.NoError(t, os.Mkdir(open, 0o777))
	require.NoError(t, os.Chmod(open, 0o777))
	_, err = Verify(context.Background(), dir, Options{Record: filepath.Join(open, "r.json")})
	assert.Error(t, err, "a record others could plant is not used")
}

func TestVerifyCancelled(t *testing.T) {
	files, large := tinyModel()
	snap := hfCache(t, files, large)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Verify(ctx, snap, Options{Workers: 1})
	assert.ErrorIs(t, err, context.Canceled)
}

// TestSharesCoverEachFileOnce: three nodes verify a share each; every file is read by exactly
// one, the combined report is the whole, and a flipped byte in any share fails it, named.
func TestSharesCoverEachFileOnce(t *testing.T) {
	files, large := tinyModel()
	files["generation_config.json"] = []byte(`{}`)
	files["special_tokens_map.json"] = []byte(`{"bos":"<s>"}`)
	snap := hfCache(t, files, large)
	var shares []Report
	seen := map[string]int{}
	for i := range 3 {
		rep, err := Verify(context.Background(), snap, Options{Share: Share{Index: i, Of: 3}})
		require.NoError(t, err)
		for _, f := range rep.Files {
			seen[f.Name]++
		}
		shares = append(shares, rep)
	}
	assert.Len(t, seen, len(files))
	for name, n := range seen {
		assert.Equal(t, 1, n, "%s read once", name)
	}
	whole, err := Combine(snap, shares)
	require.NoError(t, err)
	assert.Len(t, whole.Files, len(files))
	assert.EqualValues(t, 3<<20+len(`{"model_type":"llama"}`)+len(`{"version":"1.0"}`)+2+len(`{"bos":"<s>"}`), whole.Hashed)

	// A share missing, or given twice, is not the whole.
	_, err = Combine(snap, shares[:2])
	assert.ErrorContains(t, err, "no node verified")
	_, err = Combine(snap, append(shares, shares[0]))
	assert.ErrorContains(t, err, "more than one node")

	// The record of the whole lets every share pass unread next time.
	record := filepath.Join(t.TempDir(), "rec.json")
	require.NoError(t, SaveRecord(record, whole))
	for i := range 3 {
		rep, err := Verify(context.Background(), snap, Options{Share: Share{Index: i, Of: 3}, Record: record})
		require.NoError(t, err)
		assert.Zero(t, rep.Hashed)
		assert.Equal(t, len(rep.Files), rep.Skipped)
	}

	// A flipped byte: the share that holds the file fails, and so does the whole, naming it.
	blob := filepath.Join(filepath.Dir(filepath.Dir(snap)), "blobs", sha256hex(files["model-00001-of-00001.safetensors"]))
	flipByte(t, blob, 1000)
	shares = shares[:0]
	for i := range 3 {
		rep, _ := Verify(context.Background(), snap, Options{Share: Share{Index: i, Of: 3}, Record: record})
		shares = append(shares, rep)
	}
	_, err = Combine(snap, shares)
	assert.ErrorIs(t, err, ErrMismatch)
	assert.ErrorContains(t, err, "model-00001-of-00001.safetensors (sha256 ")
}

func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, at)
	require.NoError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, at)
	require.NoError(t, err)
}

// TestManifestMissingFileAndWrongLine: a file SHA256SUMS lists but the directory lacks fails by
// name, and so does a line whose digest is not the file's.
func TestManifestMissingFileAndWrongLine(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "weights.bin"), []byte("weights"), 0o644))
	lines := sha256hex([]byte(`{}`)) + "  config.json\n" + sha256hex([]byte("weights")) + "  weights.bin\n" +
		sha256hex([]byte("gone")) + "  model-00002.safetensors\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, ManifestName), []byte(lines), 0o644))
	rep, err := Verify(context.Background(), dir, Options{})
	assert.ErrorIs(t, err, ErrMismatch)
	assert.ErrorContains(t, err, "model-00002.safetensors (stat ")
	assert.ErrorContains(t, err, "no such file or directory")
	require.Len(t, rep.Failed(), 1)

	wrong := strings.Replace(lines, sha256hex([]byte("weights")), sha256hex([]byte("other weights")), 1)
	require.NoError(t, os.WriteFile(filepath.Join(dir, ManifestName), []byte(wrong), 0o644))
	rep, err = Verify(context.Background(), dir, Options{})
	assert.ErrorIs(t, err, ErrMismatch)
	names := []string{}
	for _, f := range rep.Failed() {
		names = append(names, f.Name)
	}
	assert.ElementsMatch(t, []string{"weights.bin", "model-00002.safetensors"}, names)
}
