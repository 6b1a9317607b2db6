//! Matching (pure): which existing target object, if any, is the one an anchor should own.
