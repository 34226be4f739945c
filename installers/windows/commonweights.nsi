; The Commonweights installer for Windows, built by `python installers/build.py windows` with makensis.
;
; Per user, no administrator. It carries uv.exe and the wheels of the tray app's environment; at
; install time uv fetches a Python and Qt (once) and builds that environment with the carried wheels. The
; app then builds its training environment (PyTorch for this machine's GPU or CPU) on first run.
;
; Silent install: Commonweights-Setup-VERSION.exe /S [/COORDINATOR=https://host] [/AUTOSTART]
; Silent uninstall: Uninstall.exe /S [/FORGET] (/FORGET also deletes the volunteer's identity and statistics)

Unicode true
!include "MUI2.nsh"
!include "nsDialogs.nsh"
!include "LogicLib.nsh"
!include "FileFunc.nsh"

!ifndef VERSION
  !define VERSION "0.0.0"
!endif
!ifndef PYTHON
  !define PYTHON "3.12"
!endif
!ifndef OUTFILE
  !define OUTFILE "Commonweights-Setup-${VERSION}.exe"
!endif
!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\Commonweights"
!define RUN_KEY "Software\Microsoft\Windows\CurrentVersion\Run"
!define APP_EXE "$INSTDIR\app\Scripts\commonweights-app.exe"
; platformdirs' user data folder of the app (volunteer_app.environment.default_root's parent)
!define USER_DATA "$LOCALAPPDATA\commonweights"

Name "Commonweights"
OutFile "${OUTFILE}"
InstallDir "$LOCALAPPDATA\Programs\Commonweights"
InstallDirRegKey HKCU "Software\Commonweights" "InstallDir"
RequestExecutionLevel user
SetCompressor /SOLID lzma
VIProductVersion "${VERSION}.0"
VIAddVersionKey "ProductName" "Commonweights"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "FileDescription" "Commonweights volunteer app installer"
VIAddVersionKey "LegalCopyright" "Apache-2.0"

Var CoordinatorUrl
Var UrlField
Var Autostart
Var AutostartBox
Var Forget
Var ForgetBox

!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_DIRECTORY
Page custom CoordinatorPage CoordinatorLeave
!insertmacro MUI_PAGE_INSTFILES
!define MUI_FINISHPAGE_RUN "${APP_EXE}"
!define MUI_FINISHPAGE_RUN_TEXT "Start Commonweights"
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
UninstPage custom un.ForgetPage un.ForgetLeave
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

Function .onInit
  ; An upgrade keeps the coordinator the last install used; the command line can name another.
  ReadRegStr $CoordinatorUrl HKCU "Software\Commonweights" "CoordinatorUrl"
  ReadRegStr $Autostart HKCU "Software\Commonweights" "Autostart"
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/COORDINATOR=" $R1
  ${IfNot} ${Errors}
    StrCpy $CoordinatorUrl $R1
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/AUTOSTART" $R1
  ${IfNot} ${Errors}
    StrCpy $Autostart ${BST_CHECKED}
  ${EndIf}
FunctionEnd

Function CoordinatorPage
  !insertmacro MUI_HEADER_TEXT "Coordinator" "Where this computer's work goes"
  nsDialogs::Create 1018
  Pop $0
  ${NSD_CreateLabel} 0 0 100% 24u "The address of the coordinator to contribute to (leave it empty to choose on first run; the settings change it later):"
  Pop $0
  ${NSD_CreateText} 0 28u 100% 12u "$CoordinatorUrl"
  Pop $UrlField
  ${NSD_CreateCheckbox} 0 50u 100% 12u "Start Commonweights when I log in"
  Pop $AutostartBox
  ${NSD_SetState} $AutostartBox $Autostart
  nsDialogs::Show
FunctionEnd

Function CoordinatorLeave
  ${NSD_GetText} $UrlField $CoordinatorUrl
  ${NSD_GetState} $AutostartBox $Autostart
  Call CheckUrl
FunctionEnd

; The address goes into install.json as a JSON string (written in the ANSI code page): empty, or an
; http(s):// or ws(s):// URL of the characters URLs are made of, nothing else.
!define URL_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~:/?#[]@!$$&'()*+,;=%"
Function CheckUrl
  StrCmp $CoordinatorUrl "" ok
  StrCpy $R3 $CoordinatorUrl 7
  StrCmp $R3 "http://" chars
  StrCpy $R3 $CoordinatorUrl 8
  StrCmp $R3 "https://" chars
  StrCpy $R3 $CoordinatorUrl 5
  StrCmp $R3 "ws://" chars
  StrCpy $R3 $CoordinatorUrl 6
  StrCmp $R3 "wss://" chars bad
  chars:
  StrCpy $R1 0
  next:
    StrCpy $R2 $CoordinatorUrl 1 $R1
    StrCmp $R2 "" ok
    StrCpy $R4 0
    find:
      StrCpy $R5 "${URL_CHARS}" 1 $R4
      StrCmp $R5 "" bad
      StrCmpS $R5 $R2 found
      IntOp $R4 $R4 + 1
      Goto find
    found:
    IntOp $R1 $R1 + 1
    Goto next
  bad:
    MessageBox MB_ICONEXCLAMATION "The coordinator's address must start with http://, https://, ws:// or wss:// and hold only the characters of a URL." /SD IDOK
    Abort
  ok:
FunctionEnd

Section "Commonweights" SecApp
  SetOutPath "$INSTDIR"
  ${If} ${Silent}
    Call CheckUrl
  ${EndIf}
  ; An upgrade over a running app: stop it (and its training child) so its files can be replaced.
  nsExec::Exec 'taskkill /F /T /IM commonweights-app.exe'
  Pop $0
  File "uv.exe"
  SetOutPath "$INSTDIR\wheels"
  File "wheels\*.whl"
  SetOutPath "$INSTDIR"

  ; The app's environment: a Python uv downloads once, then only the wheels carried here.
  DetailPrint "Preparing Python ${PYTHON} (downloaded once)..."
  python:
  nsExec::ExecToLog '"$INSTDIR\uv.exe" venv --allow-existing --python ${PYTHON} "$INSTDIR\app"'
  Pop $0
  ${If} $0 != 0
    MessageBox MB_RETRYCANCEL|MB_ICONEXCLAMATION "Could not get Python ${PYTHON}: is this computer offline? Check the connection and retry." /SD IDCANCEL IDRETRY python
    Abort "Python could not be downloaded"
  ${EndIf}
  DetailPrint "Installing the app (and Qt, downloaded once)..."
  qt:
  nsExec::ExecToLog '"$INSTDIR\uv.exe" pip install --python "$INSTDIR\app\Scripts\python.exe" --find-links "$INSTDIR\wheels" "PySide6-Essentials>=6.6" platformdirs msgspec tomli-w rich'
  Pop $0
  ${If} $0 != 0
    MessageBox MB_RETRYCANCEL|MB_ICONEXCLAMATION "Could not download Qt: is this computer offline? Check the connection and retry." /SD IDCANCEL IDRETRY qt
    Abort "Qt could not be downloaded"
  ${EndIf}
  nsExec::ExecToLog '"$INSTDIR\uv.exe" pip install --python "$INSTDIR\app\Scripts\python.exe" --no-index --no-deps --reinstall-package commonweights --find-links "$INSTDIR\wheels" commonweights==${VERSION}'
  Pop $1
  ${If} $0 != 0
  ${OrIf} $1 != 0
    Abort "The app could not be installed (see the details above)"
  ${EndIf}

  ; The app finds uv beside its interpreter (volunteer_app.environment.find_uv).
  CopyFiles /SILENT "$INSTDIR\uv.exe" "$INSTDIR\app\Scripts\uv.exe"

  ; What tells the app it is installed (volunteer_app.environment.installation), beside its Scripts folder.
  FileOpen $2 "$INSTDIR\app\install.json" w
  FileWrite $2 '{"wheels": "../wheels", "coordinator_url": "$CoordinatorUrl"}$\r$\n'
  FileClose $2

  CreateShortCut "$SMPROGRAMS\Commonweights.lnk" "${APP_EXE}"
  CreateShortCut "$DESKTOP\Commonweights.lnk" "${APP_EXE}"
  ${If} $Autostart == ${BST_CHECKED}
    WriteRegStr HKCU "${RUN_KEY}" "Commonweights" '"${APP_EXE}"'
  ${Else}
    DeleteRegValue HKCU "${RUN_KEY}" "Commonweights"
  ${EndIf}

  WriteRegStr HKCU "Software\Commonweights" "InstallDir" "$INSTDIR"
  WriteRegStr HKCU "Software\Commonweights" "CoordinatorUrl" "$CoordinatorUrl"
  WriteRegStr HKCU "Software\Commonweights" "Autostart" "$Autostart"
  WriteUninstaller "$INSTDIR\Uninstall.exe"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayName" "Commonweights"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "Publisher" "Commonweights"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\Uninstall.exe"'
  WriteRegStr HKCU "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\Uninstall.exe" /S'
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoRepair" 1
SectionEnd

Function un.onInit
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/FORGET" $R1
  ${IfNot} ${Errors}
    StrCpy $Forget ${BST_CHECKED}
  ${EndIf}
FunctionEnd

Function un.ForgetPage
  nsDialogs::Create 1018
  Pop $0
  ${NSD_CreateLabel} 0 0 100% 24u "The app and its training environment are removed. Your volunteer identity, credit and statistics stay, for a later install, unless you tick this:"
  Pop $0
  ${NSD_CreateCheckbox} 0 30u 100% 12u "Also delete my volunteer identity and statistics"
  Pop $ForgetBox
  nsDialogs::Show
FunctionEnd

Function un.ForgetLeave
  ${NSD_GetState} $ForgetBox $Forget
FunctionEnd

Section "Uninstall"
  nsExec::Exec 'taskkill /F /T /IM commonweights-app.exe'
  Pop $0
  Delete "$SMPROGRAMS\Commonweights.lnk"
  Delete "$DESKTOP\Commonweights.lnk"
  DeleteRegValue HKCU "${RUN_KEY}" "Commonweights"
  RMDir /r "$INSTDIR\app"
  RMDir /r "$INSTDIR\wheels"
  Delete "$INSTDIR\uv.exe"
  Delete "$INSTDIR\Uninstall.exe"
  RMDir "$INSTDIR"
  RMDir /r "${USER_DATA}\training-env"
  ${If} $Forget == ${BST_CHECKED}
    RMDir /r "${USER_DATA}"
  ${EndIf}
  DeleteRegKey HKCU "${UNINSTALL_KEY}"
  DeleteRegKey HKCU "Software\Commonweights"
SectionEnd
