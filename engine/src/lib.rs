//! The engine: deciders (pure functions from a projection's state and a
//! command to new facts) and effect runners (LLM inference, tools,
//! sandboxes, the bus) that perform effects and journal their results.
//!
//! Deciders never read the clock, draw randomness or touch the network;
//! whatever they need from the world arrives as a journaled event. Built by
//! the engine and reasoning-loop issues.
