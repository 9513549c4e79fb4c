package logical_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMemos(t *testing.T) {
	ctx := context.Background()
	file, err := logical.NewFileMemo(filepath.Join(t.TempDir(), "nested", "dir"))
	require.NoError(t, err)
	for name, memo := range map[string]logical.Memo{"memory": logical.NewMemoryMemo(), "file": file} {
		t.Run(name, func(t *testing.T) {
			v, err := memo.Get(ctx, "absent")
			require.NoError(t, err)
			assert.Nil(t, v, "an absent key is (nil, nil)")

			value := []byte(`{"seq":1}`)
			require.NoError(t, memo.Put(ctx, "k", value))
			value[2] = 'X' // the memo keeps its own copy
			v, err = memo.Get(ctx, "k")
			require.NoError(t, err)
			assert.Equal(t, `{"seq":1}`, string(v))

			require.NoError(t, memo.Put(ctx, "k", []byte("2")))
			v, err = memo.Get(ctx, "k")
			require.NoError(t, err)
			assert.Equal(t, "2", string(v))

			// Keys with any characters are kept apart.
			require.NoError(t, memo.Put(ctx, "a/b", []byte("slash")))
			require.NoError(t, memo.Put(ctx, "a_b", []byte("underscore")))
			v, _ = memo.Get(ctx, "a/b")
			assert.Equal(t, "slash", string(v))
			v, _ = memo.Get(ctx, "a_b")
			assert.Equal(t, "underscore", string(v))
		})
	}
}

func TestFileMemoCrashLeftovers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	memo, err := logical.NewFileMemo(dir)
	require.NoError(t, err)
	require.NoError(t, memo.Put(ctx, "loop", []byte("old")))
	// A crash between the temporary file's write and the rename leaves it
	// behind; it must not be read, and later writes must still work.
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".tmp-123456"), []byte("half"), 0o644))
	v, err := memo.Get(ctx, "loop")
	require.NoError(t, err)
	assert.Equal(t, "old", string(v))
	require.NoError(t, memo.Put(ctx, "loop", []byte("new")))

	reopened, err := logical.NewFileMemo(dir)
	require.NoError(t, err)
	v, err = reopened.Get(ctx, "loop")
	require.NoError(t, err)
	assert.Equal(t, "new", string(v))

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 2, "the stray temporary file and the value; no new leftovers")
}

func TestFileMemoErrors(t *testing.T) {
	_, err := logical.NewFileMemo("")
	assert.ErrorContains(t, err, "directory is empty")

	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	_, err = logical.NewFileMemo(filepath.Join(file, "sub"))
	assert.ErrorContains(t, err, file)

	dir := t.TempDir()
	memo, err := logical.NewFileMemo(dir)
	require.NoError(t, err)
	require.NoError(t, os.Mkdir(memo.Path("isdir"), 0o755))
	_, err = memo.Get(context.Background(), "isdir")
	assert.ErrorContains(t, err, `key "isdir"`)
}

// doneAfter is a context whose Err is nil for its first n calls and
// context.Canceled after: it ends between two checks of one Put.
type doneAfter struct {
	context.Context
	n     int
	calls int
}

func (c *doneAfter) Err() error {
	c.calls++
	if c.calls > c.n {
		return context.Canceled
	}
	return nil
}

// TestMemoPutHonoursContext: a Put whose context is done writes nothing,
// also when the context ends while the value is being written (before the
// rename). The loop relies on it: SetConsistentPoint calls Put under the
// iteration's context, which a lost lease cancels. FileMemo used to ignore
// its context.
func TestMemoPutHonoursContext(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file, err := logical.NewFileMemo(dir)
	require.NoError(t, err)
	for name, memo := range map[string]logical.Memo{"memory": logical.NewMemoryMemo(), "file": file} {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, memo.Put(ctx, "k", []byte("old")))
			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			err := memo.Put(cancelled, "k", []byte("new"))
			assert.ErrorIs(t, err, context.Canceled)
			v, err := memo.Get(ctx, "k")
			require.NoError(t, err)
			assert.Equal(t, "old", string(v), "a Put with a done context wrote")
		})
	}
	t.Run("file, context done during the write", func(t *testing.T) {
		require.NoError(t, file.Put(ctx, "late", []byte("old")))
		err := file.Put(&doneAfter{Context: ctx, n: 1}, "late", []byte("new"))
		assert.ErrorIs(t, err, context.Canceled)
		v, err := file.Get(ctx, "late")
		require.NoError(t, err)
		assert.Equal(t, "old", string(v), "the value was renamed into place after the context ended")
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range entries {
			assert.NotContains(t, e.Name(), ".tmp-", "a temporary file was left behind")
		}
	})
}
