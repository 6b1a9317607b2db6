//! Data parallelism for the pure steps that walk a whole projection (the plan over every
//! source object): the work is split into one contiguous part per core, each part runs on a
//! scoped thread, and the results come back in the input's order.

/// The results of [`filter_map`], in the input's order: one list per part, handed out as
/// they are rather than copied into one (a plan of a whole directory is tens of megabytes).
pub struct Parts<R>(Vec<Vec<R>>);

impl<R> Parts<R> {
    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.0.iter().flatten()
    }
}

impl<R> IntoIterator for Parts<R> {
    type Item = R;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<R>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().flatten()
    }
}

/// The `Some` results of `f` over every item, in order, on up to one thread per core; on the
/// calling thread alone when there are fewer than `min_per_thread` items per thread to share.
pub fn filter_map<T: Sync, R: Send>(
    items: &[T],
    min_per_thread: usize,
    f: impl Fn(&T) -> Option<R> + Sync,
) -> Parts<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(items.len() / min_per_thread.max(1))
        .max(1);
    if threads == 1 {
        return Parts(vec![items.iter().filter_map(&f).collect()]);
    }
    let part = items.len().div_ceil(threads);
    let f = &f;
    Parts(std::thread::scope(|s| {
        let workers: Vec<_> = items
            .chunks(part)
            .map(|chunk| s.spawn(move || chunk.iter().filter_map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .map(|w| match w.join() {
                Ok(v) => v,
                // A panic in `f` is a bug: let it go on unwinding as if on this thread.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_whatever_the_split() {
        for n in [0, 1, 7, 100, 10_001] {
            let items: Vec<u64> = (0..n).collect();
            for min in [1, 3, 1000, usize::MAX] {
                let odd = |x: &u64| (x % 2 == 1).then_some(x * 2);
                let out = filter_map(&items, min, odd);
                let want: Vec<u64> = items.iter().filter_map(odd).collect();
                assert_eq!(out.iter().copied().collect::<Vec<_>>(), want);
                assert_eq!(out.into_iter().collect::<Vec<_>>(), want);
            }
        }
    }
}
