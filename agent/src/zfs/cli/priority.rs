//! The one `pre_exec` of zdr: lowering a child's CPU priority before it runs.
// pre_exec is unsafe (the closure runs between fork and exec); this is its only use.
#![allow(unsafe_code)]

use std::process::Command;

/// The size estimate runs beside the stream and only feeds the progress
/// report. Its kernel work (an `-I` range opens every snapshot in it) runs
/// in its process, so at nice 19 it yields the CPU to the stream.
pub(super) fn lowest_priority(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setpriority(2) is async-signal-safe and only changes the child.
    unsafe {
        cmd.pre_exec(|| {
            // Raising one's own niceness needs no privilege; should it fail,
            // the estimate runs at the normal priority all the same.
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_runs_at_the_lowest_priority() {
        let nice = |lower: bool| {
            let mut cmd = Command::new("cat");
            cmd.arg("/proc/self/stat");
            if lower {
                lowest_priority(&mut cmd);
            }
            let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
            // Field 19 of stat(5); the fields after the ")" of the name start at 3.
            let after = out.rsplit_once(") ").unwrap().1;
            after
                .split(' ')
                .nth(19 - 3)
                .unwrap()
                .parse::<i32>()
                .unwrap()
        };
        let ours = nice(false);
        assert_eq!(nice(true), 19, "ours is {ours}");
        assert!(
            ours < 19,
            "the test itself runs at nice {ours}, too high to tell"
        );
    }
}
