//===- Interrupt.h - Stopping a run cleanly on a signal ---------*- C++ -*-===//
//
// The first SIGINT or SIGTERM only sets a flag: the loop finishes its
// current step, writes a checkpoint and exits. A second one ends the process
// at once (the default action of the signal).
//
//===----------------------------------------------------------------------===//

#ifndef LLAMAC_RUNTIME_INTERRUPT_H
#define LLAMAC_RUNTIME_INTERRUPT_H

namespace llamac {

/// Installs the handlers for SIGINT and SIGTERM (replacing any others).
void installStopHandlers();
/// The first stop signal received since installStopHandlers, or 0.
int stopSignal();
/// "SIGINT", "SIGTERM", or "signal N".
const char *stopSignalName(int signal);

} // namespace llamac

#endif // LLAMAC_RUNTIME_INTERRUPT_H
