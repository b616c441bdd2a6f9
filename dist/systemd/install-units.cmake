# Installs the units of this directory into <prefix>/lib/systemd/system
# with their paths made to fit <prefix>.  `cmake --install` runs it through
# install(SCRIPT ...); CMAKE_INSTALL_PREFIX is then the prefix of that run
# (--prefix included), so an installed unit always starts the binaries
# installed next to it.  DESTDIR is honoured by file(INSTALL).
#
# The units in the tree name the default prefix and work as they are; each
# occurrence of that prefix followed by a slash is replaced.
string(REGEX REPLACE "/+$" "" _atun_prefix "${CMAKE_INSTALL_PREFIX}")
set(_atun_unitdir "${_atun_prefix}/lib/systemd/system")
file(MAKE_DIRECTORY "$ENV{DESTDIR}${_atun_unitdir}")
foreach(_atun_unit atun-gateway.service atun-agent.service)
  file(READ "${CMAKE_CURRENT_LIST_DIR}/${_atun_unit}" _atun_text)
  string(REPLACE "/usr/local/" "${_atun_prefix}/" _atun_text "${_atun_text}")
  # Staged next to its destination: an install script has no build
  # directory of its own (its current directory is the caller's).
  set(_atun_stage "$ENV{DESTDIR}${_atun_unitdir}/.${_atun_unit}.stage")
  file(WRITE "${_atun_stage}" "${_atun_text}")
  file(INSTALL DESTINATION "${_atun_unitdir}" TYPE FILE RENAME "${_atun_unit}"
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES "${_atun_stage}")
  file(REMOVE "${_atun_stage}")
endforeach()
