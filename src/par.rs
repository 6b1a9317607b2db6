//! Data parallelism for the pure steps that walk a whole projection (the plan over every
//! source object): the work is split into one contiguous part per core, each part runs on a
//! scoped thread, and the results come back in the input's order.

/// `f` of every item, in order, on up to one thread per core; on the calling thread alone
/// when there are fewer than `min_per_thread` items per thread to share.
pub fn map<T: Sync, R: Send>(
    items: &[T],
    min_per_thread: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(items.len() / min_per_thread.max(1))
        .max(1);
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let part = items.len().div_ceil(threads);
    let f = &f;
    let parts: Vec<Vec<R>> = std::thread::scope(|s| {
        let workers: Vec<_> = items
            .chunks(part)
            .map(|chunk| s.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .map(|w| match w.join() {
                Ok(v) => v,
                // A panic in `f` is a bug: let it go on unwinding as if on this thread.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for p in parts {
        out.extend(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_whatever_the_split() {
        for n in [0, 1, 7, 100, 10_001] {
            let items: Vec<u64> = (0..n).collect();
            for min in [1, 3, 1000, usize::MAX] {
                let out = map(&items, min, |x| x * 2);
                assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
            }
        }
    }
}
