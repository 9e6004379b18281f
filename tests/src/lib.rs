//! Whole-stack tests of pvusb: backend, frontend and xenstored as separate processes on the simulated platform.
