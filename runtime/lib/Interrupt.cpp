//===- Interrupt.cpp - Stopping a training run cleanly on SIGINT/SIGTERM --===//

#include "llamac/Runtime/Interrupt.h"

#include <csignal>
#include <signal.h>

using namespace llamac;

static volatile std::sig_atomic_t received = 0;

extern "C" void llamacStopHandler(int signal) {
  if (received != 0) {
    // Second signal: give up on a clean stop.
    std::signal(signal, SIG_DFL);
    std::raise(signal);
    return;
  }
  received = signal;
}

void llamac::installStopHandlers() {
  received = 0;
  struct sigaction action = {};
  action.sa_handler = llamacStopHandler;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

int llamac::stopSignal() { return received; }

const char *llamac::stopSignalName(int signal) {
  switch (signal) {
  case SIGINT:
    return "SIGINT";
  case SIGTERM:
    return "SIGTERM";
  default:
    return "a signal";
  }
}
