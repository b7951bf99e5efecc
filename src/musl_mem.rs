//! Byte copies and comparisons for the static musl build (what Azure runs), which exports them as
//! `memcpy`, `memmove`, `memcmp` and `bcmp` (src/main.rs) in place of musl's.
//!
//! musl's x86_64 `memcpy` copies the bytes up to an 8-byte boundary one `movsb` at a time, the rest
//! with `rep movsq` and the tail one `movsb` at a time again; its `memcmp` (and `bcmp`, which Rust
//! calls for every `==` on byte slices) compares byte by byte. Rust calls them for every copy or
//! comparison of a length it does not know at compile time — most of them a few to a few dozen
//! bytes: a string appended to an Arrow builder, a key part hashed, a value interned by the parquet
//! writer. In a 1M-event `run` of the deploy build, `memcpy` alone took 23 % of the CPU (glibc's
//! takes 7 % of the glibc build's), and the deploy build was 1.6× slower than the glibc build to gold.
//!
//! Up to 128 bytes are copied and compared with two to eight overlapping loads of 1, 2, 4, 8 or 16
//! bytes (the technique of glibc's and LLVM's own routines); copies up to 2 KiB go 64 bytes a step
//! through 16-byte registers; longer ones use `rep movsb`, which CPUs with ERMS (Intel's since 2012,
//! AMD's recent ones) run at close to memory speed and every x86_64 CPU runs correctly (glibc also
//! uses it, from 2 KiB on). Below that, its start-up of tens of cycles outweighs the copy (it used to
//! start at 65 bytes, and every move of a larger value paid it). Every load and store here is of a
//! register-sized value or inline assembly, so the compiler cannot turn these functions back into
//! calls to themselves. They are tested against byte-by-byte copies and comparisons on every build
//! (`tests`), and the musl test run (`scripts/test --target x86_64-unknown-linux-musl`) runs the whole
//! suite through them.
#![allow(unsafe_code)]

use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};
use std::cmp::Ordering;

/// Copies `n` bytes from `src` to `dst`, forwards; the regions may overlap only with `dst` at or
/// before `src`.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes.
#[inline]
pub unsafe fn copy_forward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY (every block below): the caller's contract covers `n` bytes from `src` and `dst`; each
    // load and store stays within them (`n` bounds every offset), and all loads of a short copy
    // are done before its stores, so overlapping regions copy as if through a buffer.
    unsafe {
        if n <= 16 {
            copy_short(dst, src, n);
        } else if n <= 32 {
            let (a, b) = (load16(src), load16(src.add(n - 16)));
            store16(dst, a);
            store16(dst.add(n - 16), b);
        } else if n <= 64 {
            let (a, b) = (load16(src), load16(src.add(16)));
            let (c, d) = (load16(src.add(n - 32)), load16(src.add(n - 16)));
            store16(dst, a);
            store16(dst.add(16), b);
            store16(dst.add(n - 32), c);
            store16(dst.add(n - 16), d);
        } else if n <= 128 {
            let (head, tail) = (load64(src), load64(src.add(n - 64)));
            store64(dst, head);
            store64(dst.add(n - 64), tail);
        } else if n <= LOOP_MAX {
            // 64 bytes a step, forwards. The last 64 are loaded first: with the destination before an
            // overlapping source, the steps' stores reach them before the last step would read them.
            // A step's stores never reach bytes a later step reads (the destination is not after the
            // source), and each step loads before it stores.
            let tail = load64(src.add(n - 64));
            let mut i = 0;
            while i + 64 < n {
                store64(dst.add(i), load64(src.add(i)));
                i += 64;
            }
            store64(dst.add(n - 64), tail);
        } else {
            // `rep movsb` copies byte by byte as far as anyone can tell (so a destination before
            // an overlapping source is copied right), in cache lines where it can.
            std::arch::asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            );
        }
    }
}

/// Copies `n` bytes from `src` to `dst`, which may overlap in any way.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes.
#[inline]
pub unsafe fn copy_any(dst: *mut u8, src: *const u8, n: usize) {
    // A destination past the source within `n` bytes is the one overlap a forward copy spoils.
    if n <= 128 || (dst as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: the caller's contract; copies of up to 128 bytes load everything before they store.
        unsafe { copy_forward(dst, src, n) }
    } else if n <= LOOP_MAX {
        // SAFETY: the caller's contract. 64 bytes a step, backwards from the end: the first 64 are
        // loaded first (the steps' stores reach them before the last step would read them); with the
        // destination after the source, a step's stores never reach bytes a later step reads.
        unsafe {
            let head = load64(src);
            let mut end = n;
            while end > 64 {
                store64(dst.add(end - 64), load64(src.add(end - 64)));
                end -= 64;
            }
            store64(dst, head);
        }
    } else {
        // SAFETY: the caller's contract; with the direction flag set, `rep movsb` walks down from
        // the last byte of each region, so an overlapping source is read before it is overwritten.
        // The flag is cleared again before the block ends, as the calling convention requires.
        unsafe {
            std::arch::asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dst.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack)
            );
        }
    }
}

/// Compares `n` bytes as unsigned bytes, in order: `memcmp`'s result.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[inline]
pub unsafe fn compare(a: *const u8, b: *const u8, n: usize) -> Ordering {
    // SAFETY: every load is within the `n` bytes the caller vouches for. Big-endian integers of
    // the same bytes compare as the bytes do; an overlapping last load re-reads bytes already equal.
    unsafe {
        if n >= 8 {
            let mut i = 0;
            while i + 8 <= n {
                let (x, y) = (load8(a.add(i)), load8(b.add(i)));
                if x != y {
                    return u64::from_be(x).cmp(&u64::from_be(y));
                }
                i += 8;
            }
            if i == n {
                return Ordering::Equal;
            }
            let (x, y) = (load8(a.add(n - 8)), load8(b.add(n - 8)));
            return u64::from_be(x).cmp(&u64::from_be(y));
        }
        let (x, y) = (short_be(a, n), short_be(b, n));
        x.cmp(&y)
    }
}

/// Whether `n` bytes are equal (`bcmp`): [`compare`] finding no difference (it orders only the
/// first difference it meets, so equality costs it nothing more).
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[inline]
pub unsafe fn equal(a: *const u8, b: *const u8, n: usize) -> bool {
    // SAFETY: the caller's contract is `compare`'s.
    unsafe { compare(a, b, n) == Ordering::Equal }
}

/// Copies 0 to 16 bytes with two overlapping loads and stores of the widest size that fits.
///
/// # Safety
/// As [`copy_forward`], with `n <= 16`.
#[inline(always)]
unsafe fn copy_short(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: both loads of each size lie within the `n` bytes (the second ends at `n`), and both
    // come before the stores.
    unsafe {
        if n >= 8 {
            let (x, y) = (load8(src), load8(src.add(n - 8)));
            dst.cast::<u64>().write_unaligned(x);
            dst.add(n - 8).cast::<u64>().write_unaligned(y);
        } else if n >= 4 {
            let (x, y) = (src.cast::<u32>().read_unaligned(), src.add(n - 4).cast::<u32>().read_unaligned());
            dst.cast::<u32>().write_unaligned(x);
            dst.add(n - 4).cast::<u32>().write_unaligned(y);
        } else if n >= 2 {
            let (x, y) = (src.cast::<u16>().read_unaligned(), src.add(n - 2).cast::<u16>().read_unaligned());
            dst.cast::<u16>().write_unaligned(x);
            dst.add(n - 2).cast::<u16>().write_unaligned(y);
        } else if n == 1 {
            dst.write(src.read());
        }
    }
}

/// 0 to 7 bytes as a big-endian number whose order is theirs (overlapping halves for 2–7 bytes: the
/// first half decides unless equal, then the second, which holds every byte after the first half).
///
/// # Safety
/// `p` must be valid for reads of `n < 8` bytes.
#[inline(always)]
unsafe fn short_be(p: *const u8, n: usize) -> u64 {
    // SAFETY: each load lies within the `n` bytes.
    unsafe {
        if n >= 4 {
            let (x, y) = (p.cast::<u32>().read_unaligned(), p.add(n - 4).cast::<u32>().read_unaligned());
            (u64::from(u32::from_be(x)) << 32) | u64::from(u32::from_be(y))
        } else if n >= 2 {
            let (x, y) = (p.cast::<u16>().read_unaligned(), p.add(n - 2).cast::<u16>().read_unaligned());
            (u64::from(u16::from_be(x)) << 16) | u64::from(u16::from_be(y))
        } else if n == 1 {
            u64::from(p.read())
        } else {
            0
        }
    }
}

/// Copies of up to this many bytes go through 16-byte registers, 64 bytes a step; longer ones use
/// `rep movsb`, whose start-up costs tens of cycles (glibc's SSE2 routines switch at the same size).
const LOOP_MAX: usize = 2048;

/// 64 bytes, as four 16-byte loads.
///
/// # Safety
/// `p` must be valid for reads of 64 bytes.
#[inline(always)]
unsafe fn load64(p: *const u8) -> [__m128i; 4] {
    // SAFETY: the caller's 64 bytes.
    unsafe { [load16(p), load16(p.add(16)), load16(p.add(32)), load16(p.add(48))] }
}

/// Stores what [`load64`] loaded.
///
/// # Safety
/// `p` must be valid for writes of 64 bytes.
#[inline(always)]
unsafe fn store64(p: *mut u8, v: [__m128i; 4]) {
    // SAFETY: the caller's 64 bytes.
    unsafe {
        store16(p, v[0]);
        store16(p.add(16), v[1]);
        store16(p.add(32), v[2]);
        store16(p.add(48), v[3]);
    }
}

#[inline(always)]
unsafe fn load8(p: *const u8) -> u64 {
    // SAFETY: the caller's 8 bytes.
    unsafe { p.cast::<u64>().read_unaligned() }
}

#[inline(always)]
unsafe fn load16(p: *const u8) -> __m128i {
    // SAFETY: the caller's 16 bytes; SSE2 is part of x86_64.
    unsafe { _mm_loadu_si128(p.cast::<__m128i>()) }
}

#[inline(always)]
unsafe fn store16(p: *mut u8, v: __m128i) {
    // SAFETY: the caller's 16 bytes.
    unsafe { _mm_storeu_si128(p.cast::<__m128i>(), v) }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;
    use std::hint::black_box;

    use proptest::prelude::*;

    /// A byte at a time through `black_box`, which the compiler cannot turn into a `memcpy` call
    /// (so in the musl build, which exports the functions under test, the oracle is not them).
    fn copy_bytes(dst: &mut [u8], from: &[u8]) {
        for (d, s) in dst.iter_mut().zip(from) {
            *d = black_box(*s);
        }
    }

    fn compare_bytes(a: &[u8], b: &[u8]) -> Ordering {
        for (x, y) in a.iter().zip(b) {
            match black_box(*x).cmp(&black_box(*y)) {
                Ordering::Equal => {}
                other => return other,
            }
        }
        Ordering::Equal
    }

    /// Lengths around every boundary of the routines (8, 16, 32, 64, 128, 2,048) and long ones.
    fn length() -> impl Strategy<Value = usize> {
        prop_oneof![0usize..140, 140usize..700, 1990usize..2110, 2110usize..5000]
    }

    proptest! {
        /// A copy between two buffers writes the source's bytes and nothing else, at any
        /// alignment.
        #[test]
        fn copies_write_the_bytes_and_only_them(
            n in length(), from in 0usize..16, to in 0usize..16, seed in any::<u64>(),
        ) {
            let src: Vec<u8> = (0..n + from).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 7) as u8).collect();
            let mut dst = vec![0xA5u8; n + to + 16];
            let mut expected = dst.clone();
            copy_bytes(&mut expected[to..to + n], &src[from..]);
            // SAFETY: both ranges are inside their vectors.
            unsafe { super::copy_forward(dst.as_mut_ptr().add(to), src.as_ptr().add(from), n) };
            prop_assert_eq!(&dst, &expected);
            let mut dst2 = vec![0xA5u8; n + to + 16];
            // SAFETY: as above.
            unsafe { super::copy_any(dst2.as_mut_ptr().add(to), src.as_ptr().add(from), n) };
            prop_assert_eq!(&dst2, &expected);
        }

        /// A move within one buffer, the regions overlapping either way or not at all, leaves what
        /// copying through a separate buffer leaves.
        #[test]
        fn moves_within_a_buffer_copy_as_if_through_a_buffer(
            n in length(), from in 0usize..5200, to in 0usize..5200, seed in any::<u64>(),
        ) {
            let size = 10_000;
            prop_assume!(from + n <= size && to + n <= size);
            let mut buf: Vec<u8> = (0..size).map(|i| (seed.wrapping_mul(i as u64 + 3) >> 9) as u8).collect();
            let mut staged = vec![0u8; n];
            copy_bytes(&mut staged, &buf[from..from + n]);
            let mut expected = buf.clone();
            copy_bytes(&mut expected[to..to + n], &staged);
            let base = buf.as_mut_ptr();
            // SAFETY: both ranges are inside the buffer.
            unsafe { super::copy_any(base.add(to), base.add(from), n) };
            prop_assert_eq!(buf, expected);
        }

        /// Comparisons order as byte-by-byte comparisons do, and say equal exactly when they do,
        /// also when the difference is the last byte or a byte above 127.
        #[test]
        fn comparisons_order_as_bytes_do(
            n in length(), seed in any::<u64>(), at in any::<prop::sample::Index>(), delta in any::<u8>(),
        ) {
            let a: Vec<u8> = (0..n).map(|i| (seed.wrapping_mul(i as u64 + 5) >> 11) as u8).collect();
            let mut b = a.clone();
            if n > 0 {
                let i = at.index(n);
                b[i] = b[i].wrapping_add(delta);
            }
            for (x, y) in [(&a, &b), (&b, &a), (&a, &a)] {
                let want = compare_bytes(x, y);
                // SAFETY: both vectors hold `n` bytes.
                let (got, same) = unsafe { (super::compare(x.as_ptr(), y.as_ptr(), n), super::equal(x.as_ptr(), y.as_ptr(), n)) };
                prop_assert_eq!(got, want);
                prop_assert_eq!(same, want == Ordering::Equal);
            }
        }
    }
}
