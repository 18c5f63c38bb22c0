//! The job pool (being written).
