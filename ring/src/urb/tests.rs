//! Tests of the URB state machines: explicit cases per rule, then random interleavings
//! checked against DESIGN.md contract 1-6 and a reference model.

mod backend_cases;
mod checks;
mod frontend_cases;
mod hold_cases;
mod props;
mod sim;
mod system_cases;
