//! The `patientflow` binary: parses the command line and maps the outcome to an exit code.

use std::process::ExitCode;

/// The static musl build (what Azure runs) allocates through mimalloc: musl's malloc serialises the
/// handler's threads (see Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The static musl build's `memcpy`, `memmove`, `memcmp` and `bcmp`: musl's copy and compare short
/// lengths a byte at a time, which took a quarter of the deploy build's CPU (`patientflow::musl_mem`).
/// Defined here, the linker takes them instead of musl's for every caller: Rust, zstd, mimalloc and
/// musl itself.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod musl_exports {
    use std::ffi::c_int;

    use patientflow::musl_mem;

    /// C's `memcpy`.
    ///
    /// # Safety
    /// C's contract: `src` readable and `dst` writable for `n` bytes, not overlapping.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract is `copy_forward`'s (non-overlapping is a special case).
        unsafe { musl_mem::copy_forward(dst, src, n) };
        dst
    }

    /// C's `memmove`.
    ///
    /// # Safety
    /// C's contract: `src` readable and `dst` writable for `n` bytes; they may overlap.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract is `copy_any`'s.
        unsafe { musl_mem::copy_any(dst, src, n) };
        dst
    }

    /// C's `memcmp`.
    ///
    /// # Safety
    /// C's contract: `a` and `b` readable for `n` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
        // SAFETY: the caller's contract is `compare`'s.
        unsafe { musl_mem::compare(a, b, n) as c_int }
    }

    /// C's `bcmp`: zero when equal (what Rust calls for `==` on byte slices).
    ///
    /// # Safety
    /// C's contract: `a` and `b` readable for `n` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
        // SAFETY: the caller's contract is `equal`'s.
        c_int::from(unsafe { !musl_mem::equal(a, b, n) })
    }
}

fn main() -> ExitCode {
    use_huge_pages();
    limit_malloc_arenas();
    match patientflow::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: what failed and why.
            eprintln!("patientflow: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc builds (local `run`, `bench`, `func start`): two malloc arenas unless the environment asks
/// otherwise. glibc gives each thread that contends for the allocator its own arena, up to eight per
/// core, and each keeps the memory it freed: a 1M-event `run` on two cores peaked at 449–514 MB with
/// glibc's defaults and at 305–322 MB with two arenas, at the same speed; one arena saved another
/// 20 MB but slowed bronze, whose threads then wait on one lock (docs/performance-log.md).
/// `MALLOC_ARENA_MAX` (or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`) set by the user wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if patientflow::memory::arena_limit_from_environment().is_some() {
        return;
    }
    // SAFETY: `mallopt` only sets a parameter of glibc's allocator, and it runs before this process
    // starts any thread: no allocation is in flight, and M_ARENA_MAX only bounds the arenas that
    // later allocations may create. The return value (0 on a refused value) needs no handling: the
    // default stays.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, patientflow::memory::DEFAULT_MALLOC_ARENAS);
    }
}

/// Other targets keep their allocator's defaults (the static musl build allocates through mimalloc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// glibc builds: glibc's malloc asks the kernel for transparent huge pages, which it does only when
/// `GLIBC_TUNABLES` says so at process start (`patientflow::memory`): so the process starts over,
/// the same program with the same arguments, standard streams and process id, with
/// `glibc.malloc.hugetlb=1` added to that variable. Nothing happens when the variable already sets
/// it (to anything: `glibc.malloc.hugetlb=0` turns huge pages off and skips the restart), when the
/// kernel offers none, or in secure-execution mode; if starting over fails, the process goes on as
/// it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn use_huge_pages() {
    use std::os::unix::process::CommandExt;

    let Some(tunables) = patientflow::memory::tunables_with_huge_pages(std::env::var_os("GLIBC_TUNABLES").as_deref())
    else {
        return;
    };
    if !patientflow::memory::kernel_offers_huge_pages() || secure_execution() {
        return;
    }
    let mut args = std::env::args_os();
    let mut again = std::process::Command::new("/proc/self/exe");
    if let Some(name) = args.next() {
        again.arg0(name);
    }
    // `exec` returns only when it failed: then this process goes on with glibc's defaults.
    let _failed = again.args(args).env("GLIBC_TUNABLES", tunables).exec();
}

/// Whether this process runs in glibc's secure-execution mode (`AT_SECURE`: set-user-ID or with
/// file capabilities, e.g. `setcap` to bind a low port), where glibc may drop `GLIBC_TUNABLES` from
/// the environment: starting over there would find the tunable missing again, and again.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn secure_execution() -> bool {
    // SAFETY: `getauxval` reads the auxiliary vector the kernel passed at exec; it takes no pointer
    // and returns 0 for a type it does not know.
    #[allow(unsafe_code)]
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) };
    secure != 0
}

/// Other targets keep their allocator's defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn use_huge_pages() {}
