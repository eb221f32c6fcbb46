//! (lead writes this)
