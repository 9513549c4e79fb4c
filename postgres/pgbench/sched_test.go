package pgbench_test

import (
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestProcStatReadsSchedstat reads this test's own process: it has
// threads, and they ran.
func TestProcStatReadsSchedstat(t *testing.T) {
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("no /proc")
	}
	st := procStat(os.Getpid())
	require.Positive(t, st.threads, "threads found in /proc/PID/task")
	assert.Positive(t, st.ran, "time on a CPU summed over the threads")
	assert.Zero(t, procStat(-1), "a process that does not exist reads as zero")
}

// TestCPUMeterSched splits a process's time between its first and last
// samples into running, waiting for a CPU and asleep.
func TestCPUMeterSched(t *testing.T) {
	at := time.Unix(1000, 0)
	m := &cpuMeter{
		first: map[int]sched{
			1: {at: at, ran: time.Second, waited: time.Second, threads: 1},
			2: {at: at, threads: 3},
			3: {at: at, threads: 1},
		},
		latest: map[int]sched{
			1: {at: at.Add(10 * time.Second), ran: 6 * time.Second, waited: 3 * time.Second, threads: 1},
			2: {at: at.Add(2 * time.Second), ran: 3 * time.Second, waited: time.Second, threads: 3},
			3: {at: at, threads: 1},
		},
	}
	assert.Equal(t, " (of 10.00s: ran 50%, waited for a CPU 20%, asleep 30%)", m.sched(1))
	assert.Equal(t, " (of 2.00s: 3 threads ran 150%, waited for a CPU 50%)", m.sched(2),
		"the threads of one process may together run more than the wall time, and sleep is not told")
	assert.Empty(t, m.sched(3), "a single sample has no interval")
	assert.Empty(t, m.sched(4), "a process never sampled")
}

// TestCPUMeterFloor: the floor is the busiest single-threaded process's
// CPU, or all the CPU spread over the machine's CPUs, whichever is more;
// a multi-threaded process counts only in the total.
func TestCPUMeterFloor(t *testing.T) {
	cpus := time.Duration(runtime.NumCPU())
	meter := func(pgreplicate, backend time.Duration) *cpuMeter {
		return &cpuMeter{
			base:   map[int]time.Duration{1: time.Second, 2: 0},
			last:   map[int]time.Duration{1: time.Second + pgreplicate, 2: backend},
			latest: map[int]sched{1: {threads: 7}, 2: {threads: 1}},
		}
	}
	assert.Equal(t, 2*time.Second, meter(time.Second, 2*time.Second).floor(),
		"the backend alone needs its 2 s whatever else runs beside it")
	big := 10 * cpus * time.Second
	assert.Equal(t, (big+time.Second)/cpus, meter(big, time.Second).floor(),
		"pgreplicate's threads run in parallel: its CPU counts spread over the CPUs, from its base")
	assert.Zero(t, (&cpuMeter{}).floor(), "nothing measured")
}
