package logical

// Internals exposed to the tests of package logical_test.

// LeaseMinWait is the least wait after a busy lease.
const LeaseMinWait = leaseMinWait
