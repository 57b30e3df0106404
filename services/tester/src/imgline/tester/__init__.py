"""imgline tester service (see ../shared/DESIGN.md section 2); built in its own issue."""
