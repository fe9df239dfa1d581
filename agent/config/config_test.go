package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigPrecedence(t *testing.T) {
	file := []byte("port: 7000\ngrace: 15s\nmodel: /file/model\nvllm-arg: [--max-model-len, \"8192\"]\n")
	tests := []struct {
		name  string
		file  []byte
		env   map[string]string
		flags []Setting
		check func(t *testing.T, c Config)
	}{
		{"defaults", nil, nil, nil, func(t *testing.T, c Config) {
			assert.Equal(t, Default(), c)
			assert.Equal(t, 20*time.Second, c.Grace)
			assert.Equal(t, 108.6, c.SUFactor)
		}},
		{"file over default", file, nil, nil, func(t *testing.T, c Config) {
			assert.Equal(t, 7000, c.Port)
			assert.Equal(t, 15*time.Second, c.Grace)
			assert.Equal(t, "/file/model", c.Model)
			assert.Equal(t, []string{"--max-model-len", "8192"}, c.VLLMArgs)
			assert.Equal(t, "vllm", c.VLLMBin, "untouched options keep their default")
		}},
		{"environment over file", file, map[string]string{"LLM_AGENT_PORT": "7100", "LLM_AGENT_VLLM_ARG": "--enforce-eager --seed 1"}, nil, func(t *testing.T, c Config) {
			assert.Equal(t, 7100, c.Port)
			assert.Equal(t, 15*time.Second, c.Grace)
			assert.Equal(t, []string{"--enforce-eager", "--seed", "1"}, c.VLLMArgs, "a list from the environment replaces the file's")
		}},
		{"flag over environment", file, map[string]string{"LLM_AGENT_PORT": "7100"},
			[]Setting{{"port", "7200"}, {"vllm-arg", "--a"}, {"vllm-arg", "--b=1"}}, func(t *testing.T, c Config) {
				assert.Equal(t, 7200, c.Port)
				assert.Equal(t, []string{"--a", "--b=1"}, c.VLLMArgs)
				assert.Equal(t, "/file/model", c.Model)
			}},
		{"every kind parses", nil, map[string]string{"LLM_AGENT_LOG_JSON": "true", "LLM_AGENT_SU_FACTOR": "52.5",
			"LLM_AGENT_RAY_WORKER_PORTS": "30000-30099", "LLM_AGENT_MAX_IN_FLIGHT_PER_KEY": "5", "LLM_AGENT_HANG_AFTER": "45s"}, nil, func(t *testing.T, c Config) {
			assert.True(t, c.LogJSON)
			assert.Equal(t, 52.5, c.SUFactor)
			assert.Equal(t, 30000, c.WorkerPortMin)
			assert.Equal(t, 30099, c.WorkerPortMax)
			assert.Equal(t, 5, c.MaxInFlightPerKey)
			assert.Equal(t, 45*time.Second, c.HangAfter)
		}},
		{"empty file", []byte("# nothing\n"), nil, nil, func(t *testing.T, c Config) {
			assert.Equal(t, Default(), c)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Resolve(tt.file, envFunc(tt.env), tt.flags)
			require.NoError(t, err)
			tt.check(t, c)
		})
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		env     map[string]string
		flags   []Setting
		message string
	}{
		{"unknown yaml key", "model: x\nmax_tokens: 5\n", nil, nil, `line 2: unknown key "max_tokens"`},
		{"yaml not a mapping", "- a\n- b\n", nil, nil, "expected a mapping"},
		{"yaml syntax", "model: [unclosed\n", nil, nil, "config file"},
		{"yaml nested value", "port: {a: 1}\n", nil, nil, "port takes a single value"},
		{"yaml list item not scalar", "vllm-arg: [[a]]\n", nil, nil, "items must be plain values"},
		{"bad int in file", "port: eighty\n", nil, nil, `config file line 1: "eighty" is not a whole number`},
		{"bad duration in env", "", map[string]string{"LLM_AGENT_GRACE": "20"}, nil, "LLM_AGENT_GRACE: \"20\" is not a duration"},
		{"negative duration", "", nil, []Setting{{"grace", "-1s"}}, "must be positive"},
		{"port out of range", "", nil, []Setting{{"port", "70000"}}, "70000 is not a TCP port"},
		{"below minimum", "", nil, []Setting{{"max-restarts", "-1"}}, "below the minimum 0"},
		{"bad bool", "", map[string]string{"LLM_AGENT_LOG_JSON": "maybe"}, nil, "not true or false"},
		{"bad float", "", nil, []Setting{{"su-factor", "lots"}}, "not a non-negative number"},
		{"bad worker range", "", nil, []Setting{{"ray-worker-ports", "30000-30001"}}, "at least 16 ports"},
		{"unknown flag", "", nil, []Setting{{"no-such", "1"}}, "unknown option --no-such"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Resolve([]byte(tt.file), envFunc(tt.env), tt.flags)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tt.message)
		})
	}
}

func TestOptionsAreDocumented(t *testing.T) {
	seen := map[string]bool{}
	for _, o := range Options {
		assert.False(t, seen[o.Name], "duplicate option %s", o.Name)
		seen[o.Name] = true
		assert.NotEmpty(t, o.Usage, o.Name)
		assert.NotEmpty(t, o.Category, o.Name)
		assert.True(t, strings.HasPrefix(o.Env(), "LLM_AGENT_"), o.Name)
		assert.NotContains(t, o.Env(), "-")
		// Every default round-trips through its own parser.
		if d := o.Default(); d != "" {
			c := Default()
			assert.NoError(t, c.setAll(o, []string{d}, "default"), o.Name)
		}
	}
}

func TestReadConfigFile(t *testing.T) {
	b, err := ReadFile("")
	assert.NoError(t, err)
	assert.Nil(t, b)
	_, err = ReadFile(filepath.Join(t.TempDir(), "missing.yaml"))
	assert.ErrorIs(t, err, ErrInvalid)
	p := filepath.Join(t.TempDir(), "c.yaml")
	require.NoError(t, os.WriteFile(p, []byte("model: m\n"), 0o600))
	b, err = ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, "model: m\n", string(b))
}

func TestServedName(t *testing.T) {
	existing := t.TempDir()
	tests := []struct {
		model, served, want string
	}{
		{"/models/Llama-3.1-8B/", "", "Llama-3.1-8B"},
		{"meta-llama/Llama-3.1-8B", "", "meta-llama/Llama-3.1-8B"},
		{"gpt2", "", "gpt2"},
		{existing, "", filepath.Base(existing)},
		{"/models/x", "chat", "chat"},
	}
	for _, tt := range tests {
		c := Config{Model: tt.model, ServedModelName: tt.served}
		assert.Equal(t, tt.want, c.ServedName(), tt.model)
	}
}

func envFunc(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestValidateLauncherAndLiveness(t *testing.T) {
	c := Default()
	assert.NoError(t, c.Validate())
	c.Launcher = LauncherMP
	assert.NoError(t, c.Validate())
	c.Launcher = "slurm"
	err := c.Validate()
	assert.ErrorIs(t, err, ErrInvalid)
	assert.ErrorContains(t, err, `--launcher "slurm": choose ray or mp`)
	c = Default()
	c.HangAfter = c.ProbeInterval
	assert.ErrorContains(t, c.Validate(), "--hang-after (5s) must be longer than --probe-interval (5s)")
}

func TestCheckExtraArgs(t *testing.T) {
	for _, bad := range []string{"--api-key", "--api-key=x", "--port", "-tp", "--distributed-executor-backend=mp"} {
		assert.ErrorIs(t, CheckExtraArgs([]string{"--max-model-len", "1", bad}), ErrInvalid, bad)
	}
	assert.NoError(t, CheckExtraArgs([]string{"--max-model-len", "8192", "--enable-prefix-caching"}))
}

func TestUIFrameAncestors(t *testing.T) {
	c := Default()
	c.UIFrameAncestors = "https://ondemand.example.edu http://ood.local:8080"
	require.NoError(t, c.Validate())
	assert.Equal(t, []string{"https://ondemand.example.edu", "http://ood.local:8080"}, c.FrameAncestors())
	for bad, want := range map[string]string{
		"ondemand.example.edu":                 "scheme",
		"https://ood.edu; script-src *":        "not an origin",
		"https://ood.edu/pun/sys":              "scheme and a host only",
		"ftp://ood.edu":                        "scheme",
		"https://user@ood.edu":                 "scheme and a host only",
		"'self'":                               "not an origin",
		"https://ood.edu,https://evil.example": "not an origin",
		"https://ood.edu/?x=1":                 "scheme and a host only",
	} {
		c := Default()
		c.UIFrameAncestors = bad
		err := c.Validate()
		require.ErrorIs(t, err, ErrInvalid, bad)
		assert.Contains(t, err.Error(), want, bad)
	}
	c = Default()
	c.UI, c.UIFrameAncestors = false, "https://ood.edu"
	assert.ErrorContains(t, c.Validate(), "--ui=false")
	c = Default()
	c.Gateway, c.UIFrameAncestors = false, "https://ood.edu"
	assert.ErrorContains(t, c.Validate(), "needs the gateway")
}
