//! The discrete-event mesh simulator that drives many `core` engines with a virtual clock and a
//! seeded RNG. Built by the simulator issue; nothing here yet.
