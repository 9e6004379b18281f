//! Properties of the URB state machines against a reference model of DESIGN.md contract 1-6.
