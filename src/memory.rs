//! Giving freed memory back to the operating system between the large steps of a gold job.
//!
//! glibc's malloc keeps what a step freed: pages in the middle of its heaps stay resident until
//! something asks for them back, so the next step's peak is counted on top of the last one's
//! leftovers. [`release_free_memory`] asks for them back. On a Functions instance, billed by its
//! memory, that is what the bill sees.
//!
//! What is given back is taken again by the next step, a page fault per 4 KiB page: a 1M-event
//! `run` faulted ≈ 400,000 times, ≈ 3 µs each on this machine's kernel (zeroing the page and
//! charging it to the process's cgroup), most of them in gold — a fifth of its time. glibc asks the
//! kernel for transparent huge pages (2 MiB, one fault where there were 512) when its tunable
//! `glibc.malloc.hugetlb=1` is set, which glibc reads only at process start: the binary sets it
//! for itself by starting over with it ([`tunables_with_huge_pages`], src/main.rs). Faults ≈ 400k →
//! ≈ 190k, gold 2.4 → 1.9 s, peak +10–30 MB (docs/performance-log.md).

/// Returns the free pages of glibc's allocator to the operating system (`malloc_trim(0)`). Other
/// builds do nothing: the static musl package allocates through mimalloc, whose purge delay
/// (`MIMALLOC_PURGE_DELAY`, README "Settings") does this on its own.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `malloc_trim` takes no pointer and has no precondition: it takes each arena's lock
    // itself and only releases pages no allocation holds. Its return value (whether anything was
    // released) needs no handling.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc's tunable that makes its malloc ask for transparent huge pages (`madvise(MADV_HUGEPAGE)`
/// on the memory it maps), read from `GLIBC_TUNABLES` at process start.
pub const HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb";

/// The value `tunables` (a `GLIBC_TUNABLES` string: `name=value` pairs joined by `:`) gives `name`.
fn tunable<'a>(tunables: &'a str, name: &str) -> Option<&'a str> {
    tunables.split(':').find_map(|t| t.split_once('=').filter(|(n, _)| *n == name).map(|(_, v)| v))
}

/// The `GLIBC_TUNABLES` to start over with so that glibc's malloc asks for transparent huge pages:
/// `current` with `glibc.malloc.hugetlb=1` added. `None` when there is nothing to do: `current`
/// already sets that tunable (to any value: the user's choice wins, `=0` turns huge pages off) or
/// is not UTF-8 (left as it is).
pub fn tunables_with_huge_pages(current: Option<&std::ffi::OsStr>) -> Option<String> {
    let current = current.map_or(Some(""), std::ffi::OsStr::to_str)?;
    if tunable(current, HUGE_PAGES_TUNABLE).is_some() {
        return None;
    }
    let ours = format!("{HUGE_PAGES_TUNABLE}=1");
    Some(if current.is_empty() { ours } else { format!("{current}:{ours}") })
}

/// The malloc arenas a glibc build allows when the environment sets no limit (src/main.rs).
pub const DEFAULT_MALLOC_ARENAS: i32 = 2;

/// The arena limit the environment sets for glibc's malloc, which wins over
/// [`DEFAULT_MALLOC_ARENAS`]: `MALLOC_ARENA_MAX` (any value), else `glibc.malloc.arena_max` in
/// `GLIBC_TUNABLES`.
pub fn arena_limit_from_environment() -> Option<String> {
    std::env::var_os("MALLOC_ARENA_MAX").map(|v| v.to_string_lossy().into_owned()).or_else(|| {
        let tunables = std::env::var("GLIBC_TUNABLES").ok()?;
        tunable(&tunables, "glibc.malloc.arena_max").map(str::to_string)
    })
}

/// Whether the kernel gives transparent huge pages to memory that asks for them: its mode
/// (`/sys/kernel/mm/transparent_hugepage/enabled`) is `always` or `madvise`, not `never`. `false`
/// when the file cannot be read (no such kernel feature, or no `/sys`).
pub fn kernel_offers_huge_pages() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]") || mode.contains("[madvise]"))
}

/// How this process allocates, for benchmark reports: the allocator and the settings that change
/// its speed and memory.
pub fn allocator() -> String {
    if cfg!(target_env = "musl") {
        return "mimalloc".to_string();
    }
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return "the system allocator".to_string();
    }
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let arenas = arena_limit_from_environment().unwrap_or_else(|| DEFAULT_MALLOC_ARENAS.to_string());
    let huge_pages = match tunable(&tunables, HUGE_PAGES_TUNABLE) {
        Some("1") if kernel_offers_huge_pages() => "asked for",
        Some("1") => "asked for, but the kernel offers none",
        _ => "not asked for",
    };
    format!("glibc malloc, {arenas} arenas at most, transparent huge pages {huge_pages}")
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn huge_pages_are_added_to_the_tunables_unless_already_chosen() {
        let with = |s: &str| tunables_with_huge_pages(Some(OsStr::new(s)));
        assert_eq!(tunables_with_huge_pages(None).as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(with("").as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(
            with("glibc.malloc.arena_max=1").as_deref(),
            Some("glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1"),
            "the user's other tunables are kept"
        );
        assert_eq!(with("glibc.malloc.hugetlb=0"), None, "the user turned huge pages off");
        assert_eq!(with("glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1"), None, "already asked for");
        assert_eq!(
            with("glibc.malloc.hugetlb_x=1").as_deref(),
            Some("glibc.malloc.hugetlb_x=1:glibc.malloc.hugetlb=1"),
            "another tunable whose name starts the same is not this one"
        );
    }

    #[cfg(unix)]
    #[test]
    fn tunables_that_are_not_utf8_are_left_alone() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(tunables_with_huge_pages(Some(OsStr::from_bytes(b"glibc.malloc.arena_max=1\xff"))), None);
    }
}
