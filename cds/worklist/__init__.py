"""The pre-session worklist: every ketamine and esketamine session of the coming days, screened ahead."""
