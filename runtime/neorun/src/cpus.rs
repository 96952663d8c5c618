//! CPU affinity, for `--shadow-cpus`: CPUs kept for shadow variants, where
//! the spare threads run and live traffic does not — on one machine, what
//! SageMaker's separate shadow instances give.

/// The CPUs this process may run on.
#[cfg(target_os = "linux")]
pub fn allowed() -> std::io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t filled by the kernel for this thread
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// Confines the calling thread (and the threads it starts later) to `cpus`.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a cpu_set_t built here; the call acts on this thread only
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn allowed() -> std::io::Result<Vec<usize>> {
    Err(std::io::Error::other("CPU affinity is only set on Linux"))
}

#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpus: &[usize]) -> std::io::Result<()> {
    Err(std::io::Error::other("CPU affinity is only set on Linux"))
}

/// Parses a CPU list: `3`, `2-3`, `1,4-5`.
pub fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: usize =
            a.trim().parse().map_err(|_| format!("{part:?} is not a CPU number or range (e.g. 3 or 2-3)"))?;
        let b: usize =
            b.trim().parse().map_err(|_| format!("{part:?} is not a CPU number or range (e.g. 3 or 2-3)"))?;
        if b < a {
            return Err(format!("{part:?}: a range goes low to high"));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_taskset_s() {
        assert_eq!(parse_list("3").unwrap(), vec![3]);
        assert_eq!(parse_list("1,4-5").unwrap(), vec![1, 4, 5]);
        assert_eq!(parse_list("2-3,3").unwrap(), vec![2, 3]);
        for bad in ["", "a", "3-1", "1,,2"] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
    }
}
