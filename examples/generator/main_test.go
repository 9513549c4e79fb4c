package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testOptions(dir string, n int) options {
	return options{n: n, state: dir, perCommit: 10, every: 10 * time.Millisecond, grace: 5 * time.Second}
}

func TestRunResumes(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()

	var out bytes.Buffer
	first, err := run(ctx, testOptions(dir, 200), &out)
	require.NoError(t, err)
	assert.Equal(t, summary{initial: -1, final: 199, applied: 200}, first)
	assert.Contains(t, out.String(), "starting from scratch")
	assert.Contains(t, out.String(), "done: 200 messages applied")

	out.Reset()
	second, err := run(ctx, testOptions(dir, 500), &out)
	require.NoError(t, err)
	assert.Equal(t, summary{initial: 199, final: 499, applied: 300}, second, "the second run does only the rest")
	assert.Contains(t, out.String(), "resuming from the saved point 199")
	assert.Contains(t, out.String(), "only the remaining 300 messages")

	out.Reset()
	third, err := run(ctx, testOptions(dir, 500), &out)
	require.NoError(t, err)
	assert.Equal(t, summary{initial: 499, final: 499}, third)
	assert.Contains(t, out.String(), "nothing to do")
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestRunStopsOnCancel(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	memo, err := logical.NewFileMemo(dir)
	require.NoError(t, err)

	o := testOptions(dir, 1_000_000)
	o.metricsAddr = "127.0.0.1:0"
	var out syncBuffer
	done := make(chan summary, 1)
	go func() {
		sum, err := run(ctx, o, &out)
		assert.NoError(t, err)
		done <- sum
	}()
	// Wait for a saved point and a progress line, then interrupt.
	deadline := time.Now().Add(time.Minute)
	for {
		buf, err := memo.Get(ctx, loopName)
		require.NoError(t, err)
		if len(buf) > 0 && strings.Contains(out.String(), "messages/s") {
			break
		}
		require.False(t, time.Now().After(deadline), "no progress: %s", out.String())
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(lineWith(out.String(), "serving metrics at "), "serving metrics at http://"), "/metrics")
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Contains(t, string(body), `logical_commits_total{loop="generator",outcome="ok"}`)

	cancel()
	var sum summary
	select {
	case sum = <-done:
	case <-time.After(time.Minute):
		t.Fatal("run did not return after the cancellation")
	}
	assert.True(t, sum.interrupted)
	assert.Contains(t, out.String(), "stopped:")

	// A second run resumes from where the first stopped.
	var again bytes.Buffer
	second, err := run(context.Background(), testOptions(dir, sum.final+21), &again)
	require.NoError(t, err)
	assert.Equal(t, sum.final, second.initial)
	assert.Equal(t, 20, second.applied)
}

func lineWith(text, prefix string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	return ""
}

func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--n", "0"}, "--n must be > 0"},
		{[]string{"--perCommit", "-1"}, "--perCommit must be > 0"},
		{[]string{"--progress", "0s"}, "--progress must be > 0"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var errOut bytes.Buffer
			_, err := parseFlags(tc.args, &errOut)
			require.Error(t, err)
			assert.Contains(t, errOut.String(), tc.want)
		})
	}
	o, err := parseFlags([]string{"--n", "5", "--state", "x"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 5, o.n)
	assert.Equal(t, "x", o.state)
}
